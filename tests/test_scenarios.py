"""Calibration: every broken scenario raises its check; no healthy scenario raises a warning or critical."""

from __future__ import annotations

import pytest

from agent.checks.catalogue import BY_NAME, CHECKS
from tests.scenarios import SCENARIOS, run, run_full

HEALTHY = [n for n, s in SCENARIOS.items() if s.healthy]
BROKEN = [n for n, s in SCENARIOS.items() if not s.healthy]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_scenario_stays_silent(name):
    fired = run(name)
    loud = {c: s for c, s in fired.items() if s in ("warning", "critical")}
    assert loud == {}, f"{name} raised {loud}"


@pytest.mark.parametrize("name", BROKEN)
def test_broken_scenario_raises_its_check_and_names_it_first(name):
    out = run_full(name)
    fired, first, lines = out.fired, out.first, out.lines
    missing = SCENARIOS[name].expect - set(fired)
    assert not missing, f"{name} did not raise {sorted(missing)}; raised {sorted(fired)}"
    if any(BY_NAME[c].severity != "info" for c in SCENARIOS[name].expect):
        assert first in SCENARIOS[name].expect, f"{name}: the first cause logged was {first}, not {sorted(SCENARIOS[name].expect)}"
    assert lines <= 2 * len(SCENARIOS[name].expect) + 1, f"{name}: {lines} log lines of findings"


def test_every_check_has_a_broken_scenario_and_healthy_ones_exist():
    covered = set().union(*(s.expect for s in SCENARIOS.values()))
    assert covered == {c.name for c in CHECKS}
    assert len(HEALTHY) >= 7

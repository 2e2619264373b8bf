"""Calibration: every broken scenario raises its check; no healthy scenario raises a warning or critical."""

from __future__ import annotations

import pytest

from agent.checks.catalogue import CHECKS
from tests.scenarios import SCENARIOS, run

HEALTHY = [n for n, s in SCENARIOS.items() if s.healthy]
BROKEN = [n for n, s in SCENARIOS.items() if not s.healthy]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_scenario_stays_silent(name):
    fired = run(name)
    loud = {c: s for c, s in fired.items() if s in ("warning", "critical")}
    assert loud == {}, f"{name} raised {loud}"


@pytest.mark.parametrize("name", BROKEN)
def test_broken_scenario_raises_its_check(name):
    fired = run(name)
    missing = SCENARIOS[name].expect - set(fired)
    assert not missing, f"{name} did not raise {sorted(missing)}; raised {sorted(fired)}"


def test_every_check_has_a_broken_scenario_and_healthy_ones_exist():
    covered = set().union(*(s.expect for s in SCENARIOS.values()))
    assert covered == {c.name for c in CHECKS}
    assert len(HEALTHY) >= 7

"""The runbooks say what the rules do: every numeric threshold and ``for`` duration of an alert appears in its
runbook's **Fires:** paragraph (or the paragraph names the parameter), and the advice names current APIs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from agent.assets import asset
from agent.checks.catalogue import alert_name
from agent.ops.cli_args import duration_seconds
from agent.ops.rules import RULES, default_params
from agent.ops.runbooks_cli import sections

TEXT = asset("docs/runbooks.md").read_text(encoding="utf-8")
SECTIONS = sections(TEXT)
_WORDS = {0.5: ("half",), 0.125: ("an eighth",), 2: ("twice",)}


def fires(alert: str) -> str:
    m = re.search(r"\*\*Fires:\*\*(.*?)(?:\n\n|$)", SECTIONS[alert], re.S)
    assert m, f"{alert}: its runbook has no **Fires:** paragraph"
    return " ".join(m.group(1).split())


def renderings(value: float) -> set[str]:
    """The ways a runbook may write ``value``: 0.001 as 0.001, 1e-3, 0.1%; 20.0 as 20, 20x; 1e-07 as 1e-7."""
    out = {f"{value:g}", repr(value), f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e"), *_WORDS.get(value, ())}
    out |= {re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s) for s in set(out)}
    if value <= 1:
        out.add(f"{value * 100:g}%")
    if value >= 1 and float(value).is_integer():
        out |= {f"{int(value)}x", f"{int(value)} ", f"{int(value):,}"}
    return out


def duration_text(text: str) -> set[str]:
    seconds = duration_seconds(text)
    if seconds == 0:
        return {"at once", "as soon as"}
    minutes = seconds / 60
    return {f"{minutes:g} minute", f"{minutes:g} minutes", f"{seconds:g} s", f"{minutes / 60:g} hour"}


@pytest.mark.parametrize("alert", sorted({r.alert for r in RULES}))
def test_every_alert_has_a_runbook_section(alert: str) -> None:
    assert alert in SECTIONS


@pytest.mark.parametrize("rule", [r for r in RULES if r.key == r.alert], ids=lambda r: r.alert)
def test_fires_paragraph_states_the_rules_thresholds_and_duration(rule) -> None:
    text = fires(rule.alert)
    assert any(t in text for t in duration_text(rule.default_for)), \
        f"{rule.alert}: the runbook does not say the rule's for duration {rule.default_for}: {text!r}"
    for key, value in default_params().items():
        check, _, name = key.partition(".")
        if alert_name(check) != rule.alert or isinstance(value, str) or name.endswith(("_bytes", "samples")):
            continue
        named = key in text or f"`{check}.*`" in text
        shown = any(re.search(rf"(?<![\d.]){re.escape(r)}(?![\d])", text) for r in renderings(float(value)))
        assert named or shown, f"{rule.alert}: the runbook neither states {key}={value!r} nor names it: {text!r}"


def test_the_drift_check_catches_a_stale_number() -> None:
    assert not any(re.search(rf"(?<![\d.]){re.escape(r)}(?![\d])", "stays below 1e-6 for 15 minutes")
                   for r in renderings(1e-07))
    assert any(r in "below 1e-7 for" for r in renderings(1e-07))


def test_advice_uses_current_torch_apis() -> None:
    assert "torch.cuda.amp.GradScaler" not in TEXT  # deprecated: torch.amp.GradScaler("cuda")
    assert "torch.cuda.amp.autocast" not in TEXT


def test_runbooks_command_prints_a_section() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "runbooks", "dead_units"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("## NNWatchDeadUnits") and "**Fires:**" in out
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "runbooks", "no_such_check"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

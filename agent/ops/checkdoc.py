"""Generates docs/checks.md from the check catalogue (committed; a drift test compares)."""

from __future__ import annotations

from pathlib import Path

from ..checks.catalogue import CHECKS, THRESHOLD_DOCS

HEADER = """# Check catalogue

Generated from `agent/checks/catalogue.py` by `nnwatch generate`; do not edit by hand. The same entries drive the
in-process checks (`monitor.findings`, the log, the webhook) and the Prometheus alert rules in `alerts/`.
Holds and warm-ups count sampled steps (every `sample_every` steps, default 10). Override a threshold with
`attach(..., thresholds={"dead_units.ratio": 0.3})` or `NNWATCH_THRESHOLDS=dead_units.ratio=0.3`.
"""


def render() -> str:
    out = [HEADER]
    out.append("| check | alert | severity | catches | signal |")
    out.append("|---|---|---|---|---|")
    for c in CHECKS:
        out.append(f"| `{c.name}` | [{c.alert}](runbooks.md#{c.alert.lower()}) | {c.severity} | {c.catches} | {c.signal} |")
    for c in CHECKS:
        out.append(f"\n## {c.name}\n")
        out.append(f"{c.summary} Catches {c.catches}; seeds: {c.seed or '-'}.\n")
        out.append(f"- scope: {c.scope}; severity: {c.severity}; hold: {c.hold} sample(s); warm-up: {c.warmup} "
                   f"sample(s); Prometheus `for`: {c.prometheus_for}")
        for name, value in c.thresholds.items():
            out.append(f"- `{c.name}.{name}` = {value:g}: {THRESHOLD_DOCS[f'{c.name}.{name}']}")
        out.append(f"- what to try first: {c.advice}")
    return "\n".join(out) + "\n"


def generate(root: Path) -> list[Path]:
    path = root / "docs" / "checks.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return [path]

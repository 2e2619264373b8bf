"""``nnwatch rules``: print or write the alert rules for a selector, thresholds and durations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .rules import RulesConfig, Value, render_yaml


def _parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--{what} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _run(args: argparse.Namespace) -> int:
    thresholds: dict[str, Value] = {}
    for k, v in _parse_pairs(args.threshold, "threshold").items():
        try:
            thresholds[k] = float(v)
        except ValueError:
            thresholds[k] = v
    try:
        config = RulesConfig(
            selector=args.selector, target_selector=args.target_selector, thresholds=thresholds,
            for_durations=_parse_pairs(args.for_, "for"), runbook_base=args.runbook_base,
            expected_jobs=tuple(args.expect_job), interval=args.interval,
        )
    except (ValueError, TypeError) as exc:
        raise SystemExit(str(exc)) from None
    text = render_yaml(config)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0


def register(sub: Any) -> None:
    d = RulesConfig()
    p = sub.add_parser("rules", help="print the Prometheus alert rules for a selector, thresholds and durations")
    p.add_argument("--selector", default=d.selector, help=f"matchers added to every nnwatch_* selector (default: {d.selector})")
    p.add_argument("--target-selector", default=d.target_selector,
                   help=f"matchers on up for NNWatchExporterDown (default: {d.target_selector})")
    p.add_argument("--threshold", action="append", default=[], metavar="CHECK.PARAM=VALUE",
                   help="override a threshold, e.g. dead_units.ratio=0.3 (repeatable)")
    p.add_argument("--for", dest="for_", action="append", default=[], metavar="ALERT=DURATION",
                   help="override a for duration, e.g. NNWatchDeadUnits=30m (repeatable)")
    p.add_argument("--expect-job", action="append", default=[], metavar="JOB",
                   help="also alert when this job has no target at all (repeatable)")
    p.add_argument("--runbook-base", default=d.runbook_base, help="base URL of the runbooks")
    p.add_argument("--interval", default=None, help="evaluation interval of the rule groups")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=_run)


__all__ = ["register"]

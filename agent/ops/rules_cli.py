"""``nnwatch rules``: print or write the alert rules for a selector, thresholds and durations.

Every input is checked before anything is written: thresholds are numbers in their range (durations where the
parameter is a window), selectors parse as PromQL label matchers, ``for`` values and the interval are
Prometheus durations, and the output's folder exists. A bad value exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..assets import runbooks_url
from . import cli_args
from .cli_args import UsageError
from .rules import RULES, RulesConfig, Value, default_params, render_yaml


def _pairs(items: list[str], what: str, example: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--{what} expects KEY=VALUE, e.g. {example}; got {item!r}")
        out[key.strip()] = value.strip()
    return out


def config_from_args(args: argparse.Namespace) -> RulesConfig:
    """The RulesConfig the arguments ask for; UsageError names the first bad one."""
    defaults = default_params()
    thresholds: dict[str, Value] = {}
    for key, raw in _pairs(args.threshold, "threshold", "dead_units.ratio=0.3").items():
        if key not in defaults:
            raise UsageError(f"--threshold: unknown threshold {key!r}; valid names: {', '.join(sorted(defaults))}")
        thresholds[key] = cli_args.threshold(key, raw, defaults[key])
    keys = {r.key for r in RULES}
    durations = _pairs(args.for_, "for", "NNWatchDeadUnits=30m")
    for key, raw in durations.items():
        if key not in keys:
            raise UsageError(f"--for: unknown alert {key!r}; valid names: {', '.join(sorted(keys))}")
        cli_args.duration(raw, f"--for {key}")
    interval = cli_args.duration(args.interval, "--interval", positive=True) if args.interval is not None else None
    return RulesConfig(
        selector=cli_args.label_matchers(args.selector, "--selector"),
        target_selector=cli_args.label_matchers(args.target_selector, "--target-selector"),
        thresholds=thresholds, for_durations=durations,
        runbook_base_url=cli_args.url(args.runbook_base_url, "--runbook-base-url"),
        expected_jobs=tuple(args.expect_job), interval=interval,
    )


def _run(args: argparse.Namespace) -> int:
    output = cli_args.output_path(args.output) if args.output else None
    config = config_from_args(args)
    text = render_yaml(config, command=getattr(args, "command_line", None) or "nnwatch rules")
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text)
    except OSError as exc:
        raise UsageError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    print(f"wrote {output} ({len(RULES)} alert rules)")
    return 0


def register(sub: Any) -> None:
    d = RulesConfig()
    p = sub.add_parser("rules", help="print the Prometheus alert rules for a selector, thresholds and durations",
                       description="Print (or write with -o) the nnwatch alert rules for your selectors, thresholds "
                       "and durations; the file passes `promtool check rules`. Invalid input exits with status 2.")
    p.add_argument("--selector", default=d.selector,
                   help=f"PromQL label matchers added to every nnwatch_* selector (default: {d.selector})")
    p.add_argument("--target-selector", default=d.target_selector,
                   help=f"label matchers on up for NNWatchExporterDown (default: {d.target_selector})")
    p.add_argument("--threshold", action="append", default=[], metavar="CHECK.PARAM=VALUE",
                   help="override a threshold, e.g. dead_units.ratio=0.3 or exploding_gradients.window=1h (repeatable)")
    p.add_argument("--for", dest="for_", action="append", default=[], metavar="ALERT=DURATION",
                   help="override a for duration, e.g. NNWatchDeadUnits=30m (repeatable)")
    p.add_argument("--expect-job", action="append", default=[], metavar="JOB",
                   help="also alert when this job has no target at all (repeatable)")
    p.add_argument("--runbook-base-url", "--runbook-base", dest="runbook_base_url", default=runbooks_url(),
                   help="URL of your copy of docs/runbooks.md; alerts link to <url>#<alert> "
                   "(default: the runbooks installed with nnwatch, a file:// URL on this machine)")
    p.add_argument("--interval", default=None, help="evaluation interval of the rule groups, e.g. 30s")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=_run)


__all__ = ["register", "config_from_args"]

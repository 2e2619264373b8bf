"""``nnwatch`` command line: the demo, generators of committed artefacts, local tooling.

Each subcommand lives in its own module with a ``register(subparsers)`` function; ``generate`` runs
every module's ``generate(root)`` so committed artefacts (rules, dashboards, chart copies) come from one
command and a drift test can compare them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

from .ops.cli_args import UsageError

COMMAND_MODULES = ("agent.demo", "agent.ops.rules_cli", "agent.ops.runbooks_cli", "agent.ops.stack", "agent.ops.grafana_push",
                   "agent.ops.report", "agent.collect.native")
"""Modules that add subcommands (missing ones are skipped) and, optionally, generators."""

GENERATOR_MODULES = ("agent.ops.checkdoc", "agent.ops.rules", "agent.ops.dashboards", "agent.ops.chart")
"""Modules with ``generate(root: Path) -> list[Path]``, run in this order by ``nnwatch generate``."""


def _modules(names: tuple[str, ...]) -> list[ModuleType]:
    """Import the named modules, skipping those that do not exist (a missing dependency still raises)."""
    out = []
    for name in names:
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return out


def generators() -> list[Callable[[Path], list[Path]]]:
    return [mod.generate for mod in _modules(GENERATOR_MODULES)]


def _generate(args: argparse.Namespace) -> int:
    from .ops.paths import generation_root

    root = generation_root(args.root)
    for gen in generators():
        for path in gen(root):
            print(f"wrote {path.relative_to(root)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="nnwatch", description="Watch PyTorch training jobs for silent failures.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"nnwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = sub.add_parser("generate", help="regenerate committed artefacts (alert rules, dashboards, chart copies)")
    gen.add_argument("--root", help="repository root to write into (default: this checkout)")
    gen.set_defaults(func=_generate)
    for mod in _modules(COMMAND_MODULES):
        mod.register(sub)
    _describe(sub)
    return parser


def _describe(sub: argparse._SubParsersAction) -> None:
    """Give every subcommand's help page a description: its one-line summary where it has none."""
    summaries = {a.dest: a.help for a in sub._choices_actions}
    for name, parser in sub.choices.items():
        if parser.description is None and summaries.get(name):
            parser.description = summaries[name][0].upper() + summaries[name][1:] + "."
        for action in parser._actions:  # nested commands (`nnwatch dashboards push`)
            if isinstance(action, argparse._SubParsersAction):
                _describe(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # a bare `nnwatch`: say what it can do
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args.command_line = shlex.join(["nnwatch", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:  # bad input a user can fix: one line, argparse's exit status
        print(f"nnwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

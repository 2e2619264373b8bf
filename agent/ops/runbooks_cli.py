"""``nnwatch runbooks``: read the runbooks installed with nnwatch, or copy them where a team hosts docs.

The runbooks (docs/runbooks.md, one section per alert) ship in the package; findings and alert rules link to
``<runbook_base_url>#<alert in lower case>``. ``nnwatch runbooks NNWatchDeadUnits`` (or ``dead_units``)
prints that section in a terminal, ``--path`` prints where the file is, ``-o DIR`` copies it for hosting.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import Any

from ..assets import asset
from ..checks.catalogue import alert_name
from .cli_args import UsageError


def sections(text: str) -> dict[str, str]:
    """Alert name -> its section (from its ``## `` heading up to the next one)."""
    parts = re.split(r"(?m)^## ", text)
    return {p.split("\n", 1)[0].strip(): "## " + p.rstrip() + "\n" for p in parts[1:]}


def _run(args: argparse.Namespace) -> int:
    path = asset("docs/runbooks.md")
    if args.path:
        print(path)
        return 0
    if args.output:
        folder = Path(args.output)
        if not folder.is_dir():
            raise UsageError(f"--output: {folder} is not a directory; create it first")
        target = folder / "runbooks.md"
        shutil.copyfile(path, target)
        print(f"wrote {target}; set runbook_base_url (agent option, `nnwatch rules --runbook-base-url`, Helm "
              "rules.runbookBaseUrl) to the URL it is served at")
        return 0
    found = sections(path.read_text(encoding="utf-8"))
    if args.alert is None:
        print(f"Runbooks: {path.as_uri()}\n" + "\n".join(f"  {name}" for name in found))
        return 0
    name = args.alert if args.alert.startswith("NNWatch") else alert_name(args.alert)
    match = {k.lower(): k for k in found}.get(name.lower())
    if match is None:
        raise UsageError(f"no runbook for {args.alert!r}; alerts with one: {', '.join(found)}")
    print(found[match], end="")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("runbooks", help="print an alert's runbook, or where the installed runbooks are",
                       description="Print the runbook of an alert (NNWatchDeadUnits) or check (dead_units) from the "
                       "runbooks installed with nnwatch; without an argument, list them and their location.")
    p.add_argument("alert", nargs="?", help="alert or check name, e.g. NNWatchDeadUnits or dead_units")
    p.add_argument("--path", action="store_true", help="print the path of the installed runbooks.md")
    p.add_argument("-o", "--output", metavar="DIR", help="copy runbooks.md into DIR (to host it for your team)")
    p.set_defaults(func=_run)


__all__ = ["register", "sections"]

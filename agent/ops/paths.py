"""Where the committed artefacts live: the source checkout that ``nnwatch generate`` rewrites."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..assets import checkout_root
from .cli_args import UsageError

GENERATOR_PACKAGES = {"grafana_foundation_sdk": "grafana-foundation-sdk", "yaml": "pyyaml"}
"""Import name -> pip name of what the generators need beyond the runtime (development dependencies)."""


def repo_root() -> Path:
    """The source checkout this package runs from; UsageError for an installed package (nothing to rewrite)."""
    root = checkout_root()
    if root is None:
        raise UsageError("this nnwatch is an installed package, not a source checkout: generating rewrites a "
                         "checkout's committed files; pass --root CHECKOUT or run it from a clone of nnwatch")
    return root


def generation_root(given: str | None) -> Path:
    """The folder to write into (``--root`` or this checkout), after checking that every generator can run
    (its dependencies import, hand-written sources are found): nothing is written otherwise."""
    root = Path(given).resolve() if given else repo_root()
    if not root.is_dir():
        raise UsageError(f"--root: {root} is not a directory")
    if checkout_root() is None and not (root / "helm" / "nnwatch" / "values.yaml").is_file():
        raise UsageError(f"--root: {root} is not a checkout of nnwatch (the chart's hand-written values.yaml "
                         "is read from there); pass a clone of nnwatch")
    missing = [pip for mod, pip in GENERATOR_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise UsageError(f"generating needs {', '.join(missing)}: pip install {' '.join(missing)} "
                         "(or `pip install -r requirements-test.txt` in the checkout)")
    return root


__all__ = ["repo_root", "generation_root", "GENERATOR_PACKAGES"]

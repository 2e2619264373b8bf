"""Where the committed artefacts live: the source checkout this package was installed from."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The source checkout this package was installed from (generators write there)."""
    return Path(__file__).resolve().parents[2]


__all__ = ["repo_root"]

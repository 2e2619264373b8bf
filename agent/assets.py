"""Files the package ships besides its code: alert rules, Alertmanager config and templates, dashboards, runbooks.

In a source checkout they are read where they are committed (``alerts/``, ``dashboards/``, ``docs/``); an
installed wheel carries copies under ``agent/_shipped/`` (setup.py copies them at build time), so every
``nnwatch`` command works outside the checkout.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "_shipped"
"""Where a built wheel keeps its copies of the shipped files."""

SHIPPED = ("alerts/alertmanager.yml", "alerts/templates/nnwatch.tmpl", "alerts/nnwatch.rules.yml",
           "dashboards/nnwatch-overview.json", "dashboards/nnwatch-training.json",
           "dashboards/provisioning/dashboards/nnwatch.yaml", "dashboards/provisioning/datasources/nnwatch.yaml",
           "docs/runbooks.md")
"""Every shipped file, relative to the checkout's root (a test keeps the list complete)."""


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "alerts").is_dir() else None


def asset(rel: str) -> Path:
    """The shipped file ``rel`` (e.g. ``"alerts/alertmanager.yml"``): the checkout's copy when running from
    one, else the installed copy. FileNotFoundError says which file is missing from the installation."""
    root = checkout_root()
    path = (root / rel) if root is not None else SHIPPED_DIR / rel
    if not path.is_file():
        raise FileNotFoundError(f"{rel} is missing from this nnwatch installation ({path}); reinstall nnwatch")
    return path


def runbooks_url() -> str:
    """``file://`` URL of the runbooks of this installation (docs/runbooks.md): where the agent's findings,
    ``nnwatch rules`` and ``nnwatch stack`` link by default. Falls back to the project's published copy."""
    try:
        return asset("docs/runbooks.md").as_uri()
    except FileNotFoundError:
        from .checks.catalogue import RUNBOOK_BASE

        return RUNBOOK_BASE


__all__ = ["SHIPPED", "SHIPPED_DIR", "asset", "checkout_root", "runbooks_url"]

"""A finding: what the checks report (check, severity, module, since which step, the message)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """A silent failure the agent found.

    ``step`` is the step since which the condition holds; ``message`` is the one-line explanation
    (what, where, the number, what to try).
    """

    check: str
    severity: str
    module: str | None
    step: int
    message: str
    value: float | None = None
    runbook_url: str = ""


__all__ = ["Finding"]

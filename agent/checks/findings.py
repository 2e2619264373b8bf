"""Findings: what the checks report (check, severity, module, since which step, the message), and the record
of each finding over the whole run (monitor.history)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


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
    explains: bool = True
    """Whether it can explain other findings (an update ratio that is too small explains no dead units)."""


@dataclass
class FindingRecord:
    """One (check, module) over the whole run: when it first held, last held and resolved, how often it fired,
    its peak value, and what it explains (its consequences) or what explains it (its cause)."""

    check: str
    severity: str
    module: str | None
    first_step: int
    """Step since which the condition held when it first fired."""
    last_step: int
    """Last sampled step at which the condition held."""
    message: str
    """The latest message (what, where, the number, what to try)."""
    resolved_step: int | None = None
    """Step at which it last cleared; None while it holds (or for facts about the start, which never clear)."""
    fired: int = 0
    """Times it fired as a finding of its own (0 when it only ever appeared as a consequence)."""
    logged: int = 0
    """Log lines it produced (a flapping finding re-logs at most once per re-log window)."""
    last_logged: int | None = None
    peak: float = 0.0
    """Largest absolute value seen while it held."""
    explained_by: tuple[str, str | None] | None = None
    """(check, module) of the cause it was listed under, or None for a cause."""
    consequences: list[tuple[str, str | None]] = field(default_factory=list)
    explains: bool = True
    """Whether, as last seen, it can explain other findings."""

    def seen(self, f: Finding, step: int) -> None:
        self.last_step = step
        self.message = f.message
        self.explains = f.explains
        self.resolved_step = None
        if f.value is not None and math.isfinite(f.value):
            self.peak = max(self.peak, abs(f.value))

    def fire(self, f: Finding, step: int, *, logged: bool) -> None:
        self.seen(f, step)
        self.fired += 1
        if logged:
            self.logged += 1
            self.last_logged = step

    def resolve(self, step: int) -> None:
        self.resolved_step = step

    def add_consequence(self, key: tuple[str, str | None]) -> None:
        if key not in self.consequences:
            self.consequences.append(key)

    def consequence_text(self) -> str:
        return ", ".join(f"{c} in {m}" if m else c for c, m in self.consequences)

    def copy(self) -> "FindingRecord":
        return dataclasses.replace(self, consequences=list(self.consequences))


__all__ = ["Finding", "FindingRecord"]

"""Check engine (placeholder until the catalogue lands): Finding type and an engine that finds nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    """A silent failure the agent found. ``step`` is the step since which it holds."""

    check: str
    severity: str
    module: str | None
    step: int
    message: str


class CheckEngine:
    def __init__(self, options: Any) -> None:
        self.options = options
        self.raised: dict = {}

    def evaluate(self, snapshot: Any, monitor: Any) -> None:
        return None

    def active(self) -> list[Finding]:
        return []

    def close(self) -> None:
        return None

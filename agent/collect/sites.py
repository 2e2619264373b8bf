"""One activation call site's accumulators, and the dead-unit window in sampled steps and observed positions."""

from __future__ import annotations

from collections import deque
from typing import Any

from torch import Tensor

DEAD_MIN_ROWS = 256
"""A unit is called dead only after it stayed non-positive over at least this many observed positions (rows of
the batch, times positions of a sequence or a feature map), as well as over ``dead_window`` sampled steps:
with one sample per forward (a policy acting one state at a time), a step's few states are few observations,
and a unit that fires on a few percent of inputs would look dead."""


class SiteState:
    """Per call site: device-side accumulators, reset at each sample; the dead-unit history persists."""

    __slots__ = ("kind", "spec", "units", "last_alive", "seen", "calls", "rows", "steps", "sat", "numel", "nonfinite",
                 "counted", "exact", "is_output")

    def __init__(self, kind: str, spec: Any, window: int = 8) -> None:
        self.kind = kind
        self.spec = spec
        self.units = 0
        self.last_alive: Tensor | None = None
        self.seen = 0  # forward passes observed so far (the dead window counts these)
        self.calls = 0  # calls and positions observed since the last sampled step was queued
        self.rows = 0
        # (calls, positions) per sampled step: each step observed at least one position, so DEAD_MIN_ROWS steps
        # always cover the window
        self.steps: deque[tuple[int, int]] = deque(maxlen=max(DEAD_MIN_ROWS, window))
        self.sat: list[Tensor] = []
        self.numel = 0
        self.nonfinite: list[Tensor] = []  # per call: an exact count, or a detector (a sum) when not `counted`
        self.counted: list[bool] = []
        self.exact = False  # count non-finite elements exactly (after a sample found some here)
        self.is_output = False  # the model returns this tanh/sigmoid's result: its saturation is not judged


def dead_window(steps: "deque[tuple[int, int]]", window: int) -> int | None:
    """How many of the latest calls the dead window spans: those of the last ``window`` sampled steps, more
    steps when they cover fewer than DEAD_MIN_ROWS positions; early in a run every call so far. None while all
    of them cover fewer than DEAD_MIN_ROWS positions (no verdict yet)."""
    calls = rows = 0
    for k, (n_calls, n_rows) in enumerate(reversed(steps), start=1):
        calls += n_calls
        rows += n_rows
        if k >= window and rows >= DEAD_MIN_ROWS:
            return calls
    return calls if rows >= DEAD_MIN_ROWS else None


__all__ = ["DEAD_MIN_ROWS", "SiteState", "dead_window"]

"""Guards for code that runs inside the training loop: count errors, log once, disable a failing probe."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, TypeVar

log = logging.getLogger("nnwatch")

T = TypeVar("T")


class Guard:
    """Runs agent code so that a failure never reaches the training job.

    Each failure is counted per probe (``errors``); the first failure of a probe is logged with its
    traceback; after ``max_failures`` the probe is disabled and that is logged once too. Time spent in
    guarded code on the training thread is added to ``seconds`` (the agent's own overhead).
    """

    def __init__(self, max_failures: int = 3, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_failures = max_failures
        self.errors: Counter[str] = Counter()
        self.disabled: set[str] = set()
        self.seconds = 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._depth = 0  # > 0 inside a timed window: nested calls must not count their time again

    def enter(self, t0: float) -> float:
        """Open a timed window (a hook timing itself) starting at ``t0``; returns ``t0``. Guarded calls
        inside it are not timed again. Close it with ``leave``."""
        self._depth += 1
        return t0

    def leave(self, seconds: float) -> None:
        """Close the window opened by ``enter`` and count its ``seconds`` as agent time."""
        self._depth -= 1
        self.seconds += seconds

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of agent cost measured from outside a timed window (see budget.ForwardCost)."""
        if seconds > 0:
            self.seconds += seconds

    def call(self, probe: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run ``fn``; on an exception count it, log it (once per probe) and return None."""
        if probe in self.disabled:
            return None
        timed = self._depth == 0
        t0 = self._clock() if timed else 0.0
        self._depth += 1
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the job must survive any agent bug
            self.failed(probe)
            return None
        finally:
            self._depth -= 1
            if timed:
                self.seconds += self._clock() - t0

    def failed(self, probe: str) -> None:
        """Record a failure of ``probe`` from inside an ``except`` block."""
        with self._lock:
            self.errors[probe] += 1
            n = self.errors[probe]
        if n == 1:
            log.warning("nnwatch: probe %r failed; training continues (error counted in "
                        "nnwatch_agent_errors_total)", probe, exc_info=True)
        if n >= self.max_failures and probe not in self.disabled:
            self.disabled.add(probe)
            log.warning("nnwatch: probe %r failed %d times and is now disabled", probe, n)

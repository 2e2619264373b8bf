"""The stall watcher: a daemon thread that checks for a hung job while the training thread is silent."""

from __future__ import annotations

import statistics
import threading
import time
import weakref
from typing import Any, Callable, Iterable


def stall_condition(last_step_wall: float | None, recent_step_seconds: Iterable[float], now: float,
                    min_seconds: float, factor: float, hard_seconds: float | None) -> tuple[None, float, dict] | None:
    """training_stalled at Unix time ``now``: no step for longer than ``factor`` x the usual step (at least
    ``min_seconds``) or than ``hard_seconds``; None while steps are coming or before the first one."""
    if last_step_wall is None:
        return None
    age = now - last_step_wall
    recent = list(recent_step_seconds)
    usual = statistics.median(recent) if recent else 0.0
    learned = max(min_seconds, factor * usual)
    if age > learned or (hard_seconds is not None and age > hard_seconds):
        since = time.strftime("%H:%M:%S", time.localtime(last_step_wall))
        return None, age, {"usual": usual, "since": since}
    return None


def start_watcher(check: Callable[[Any], None], monitor: Any, interval: float,
                  stop: threading.Event) -> threading.Thread:
    """Call ``check(monitor)`` every ``interval`` seconds until ``stop`` is set or the monitor is gone (held
    weakly); a raising check is counted on the monitor's guard, never raised."""
    ref = weakref.ref(monitor)

    def watch() -> None:
        while not stop.wait(interval):
            mon = ref()
            if mon is None:
                return
            try:
                check(mon)
            except Exception:  # noqa: BLE001
                mon.guard.failed("stall_watcher")
            del mon

    thread = threading.Thread(target=watch, name="nnwatch-stall-watcher", daemon=True)
    thread.start()
    return thread


__all__ = ["stall_condition", "start_watcher"]

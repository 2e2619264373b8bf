"""The /metrics bytes: rendered once per snapshot (between snapshots at most once a second, for the step
counters), outside the training thread, kept as plain and gzip bytes of the text and OpenMetrics formats, so that a scrape copies
bytes and does no work that grows with the model."""

from __future__ import annotations

import gzip
import threading
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as openmetrics

TEXT = exposition.CONTENT_TYPE_LATEST
OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST


def wants_openmetrics(accept: str) -> bool:
    """Prometheus asks for OpenMetrics first in its Accept header when it can read it."""
    return "application/openmetrics-text" in accept


class RenderCache:
    """Rendered /metrics bodies by (format, gzip). ``generation()`` returns (snapshot, step): a body is rendered
    again when a new snapshot came, when the step moved and the body is ``step_age`` seconds old (step counters
    between snapshots stay at most that stale, however fast steps are), or when it is ``max_age`` seconds old
    (findings raised between steps). One render at a time; renders are counted in ``renders``."""

    def __init__(self, registry: CollectorRegistry, generation: Callable[[], tuple[Any, Any]], max_age: float = 5.0,
                 step_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._generation = generation
        self._max_age = max_age
        self._step_age = step_age
        self._clock = clock
        self._lock = threading.Lock()
        self._bodies: dict[tuple[bool, bool], tuple[Any, float, bytes]] = {}
        self.renders = 0
        self.render_seconds = 0.0

    def body(self, openmetrics_format: bool, compressed: bool) -> tuple[str, bytes]:
        """(content type, bytes) for a scrape; renders only when the cached body is out of date."""
        kind = OPENMETRICS if openmetrics_format else TEXT
        gen = self._generation()
        now = self._clock()
        with self._lock:
            cached = self._bodies.get((openmetrics_format, compressed))
            if cached is not None and self._fresh(cached, gen, now):
                return kind, cached[2]
            plain = self._bodies.get((openmetrics_format, False))
            if plain is None or not self._fresh(plain, gen, now):
                t0 = time.perf_counter()
                render = openmetrics.generate_latest if openmetrics_format else exposition.generate_latest
                plain = (gen, now, render(self._registry))
                self.renders += 1
                self.render_seconds += time.perf_counter() - t0
                self._bodies[(openmetrics_format, False)] = plain
            if compressed:
                self._bodies[(openmetrics_format, True)] = (plain[0], plain[1], gzip.compress(plain[2], compresslevel=6))
            return kind, self._bodies[(openmetrics_format, compressed)][2]

    def _fresh(self, cached: tuple[Any, float, bytes], gen: tuple[Any, Any], now: float) -> bool:
        (snap, step), age = cached[0], now - cached[1]
        return snap == gen[0] and age < self._max_age and (step == gen[1] or age < self._step_age)


__all__ = ["RenderCache", "wants_openmetrics", "TEXT", "OPENMETRICS"]

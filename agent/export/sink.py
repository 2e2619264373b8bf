"""A background writer fed from the training thread: a bounded queue, one thread, batches, a quick close().

The training thread only puts immutable records (snapshots, findings) on the queue; it never waits. A full
queue drops the record and counts it. The thread sleeps on the queue between bursts, takes everything that
is waiting and hands it to ``write`` as one batch (one transaction for a database). A ``write`` that raises is
counted in the monitor's guard (``nnwatch_agent_errors_total{probe=...}``), logged once, and the sink stops
after ``MAX_FAILURES`` failures in a row; training never sees the error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from ..guard import Guard

log = logging.getLogger("nnwatch")

MAX_FAILURES = 3
"""Consecutive failed batches after which a sink gives up (logged once)."""

_STOP = object()


class SnapshotSink:
    """Base class: subclasses implement ``write(batch)`` (a list of records) and ``finish()`` (on the thread,
    at close). ``probe`` names the sink in error counts and log lines."""

    probe = "sink"

    def __init__(self, guard: Guard | None = None, *, max_queue: int = 1024) -> None:
        self.guard = guard
        self.written = 0
        """Records written so far."""
        self.dropped = 0
        """Records dropped: the queue was full, the sink had failed, or close() ran out of time."""
        self.failed = False
        self.cpu_seconds = 0.0
        """CPU time the sink's thread spent writing (its cost to the machine, off the training thread)."""
        self._failures = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._abandon = threading.Event()  # close() gave up waiting: drop what is left
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name=f"nnwatch-{self.probe}", daemon=True)
        self._thread.start()

    # -- training thread --------------------------------------------------------------------------------
    def put(self, record: Any) -> None:
        """Queue one record; never blocks (a full queue drops it and counts it)."""
        if self.failed or self._abandon.is_set():
            self.dropped += 1
            return
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self._done(1)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued record is written (or dropped); True when the queue drained in time."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued within ``timeout`` seconds, then stop the thread; the rest counts as dropped."""
        if not self._thread.is_alive():
            return
        end = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=max(0.0, timeout / 2))
        except queue.Full:
            self._abandon.set()
            self._drain_queue()
            self._queue.put_nowait(_STOP)
        self._thread.join(max(0.0, end - time.monotonic()))
        if self._thread.is_alive():  # a slow disk: drop the rest; the thread ends after its current batch
            self._abandon.set()
            self._thread.join(max(0.0, min(0.2, end + 1.0 - time.monotonic())))

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # -- the sink's thread ----------------------------------------------------------------------------
    def write(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once on the thread when it stops (flush files, close connections)."""

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while True:  # everything that is waiting goes into one batch
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(r is _STOP for r in batch)
                records = [r for r in batch if r is not _STOP]
                if records:
                    self._write(records)
                    self._done(len(records))
        finally:
            self._drain_queue()
            try:
                self.finish()
            except Exception:  # noqa: BLE001 - a failing close of a file must not reach the job
                self._fault()

    def _write(self, records: list[Any]) -> None:
        if self.failed or self._abandon.is_set():
            self.dropped += len(records)
            return
        t0 = time.thread_time()
        try:
            self.write(records)
        except Exception:  # noqa: BLE001 - a full disk or a bad path must not reach the training job
            self.dropped += len(records)
            self._fault()
            return
        finally:
            self.cpu_seconds += time.thread_time() - t0
        self._failures = 0
        self.written += len(records)

    def _fault(self) -> None:
        self._failures += 1
        if self.guard is not None:
            self.guard.failed(self.probe)  # counted, logged once with its traceback
        else:
            log.warning("nnwatch: %s failed", self.probe, exc_info=True)
        if self._failures >= MAX_FAILURES and not self.failed:
            self.failed = True
            log.warning("nnwatch: %s failed %d times in a row and stopped; training continues", self.probe,
                        self._failures)

    def _drain_queue(self) -> None:
        n = 0
        while True:
            try:
                if self._queue.get_nowait() is not _STOP:
                    n += 1
            except queue.Empty:
                break
        self.dropped += n
        self._done(n)

    def _done(self, n: int) -> None:
        if n:
            with self._idle:
                self._pending -= n
                if self._pending <= 0:
                    self._idle.notify_all()


__all__ = ["SnapshotSink", "MAX_FAILURES"]

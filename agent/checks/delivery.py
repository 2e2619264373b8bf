"""Delivery of findings without any infrastructure: the job's own log, and an optional Slack-style webhook.

The webhook runs on its own thread: the training thread only puts a message on a bounded queue. Messages
that arrive within ``digest_seconds`` of the first one go out as one digest post (a burst of findings is one
Slack message, not a flood). Each post is retried with exponential backoff within a total deadline; a receiver that is down, hangs or answers
a byte at a time costs the job nothing, and ``close()`` stops the thread within its timeout. The URL is a
secret (it carries the token): it is never logged.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

from ..post import HTTPStatusError, Request
from .findings import Finding


log = logging.getLogger("nnwatch")

_LEVEL = {"critical": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}
_ICON = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


def finding_line(f: Finding, consequences: str = "", model: str | None = None, also: Sequence[str] = ()) -> str:
    """The one log line of an incident: severity, check, the message (what, where, since when, what to try), the
    consequences it explains (not reported separately), and the model's name when a process watches several."""
    who = f" ({model})" if model else ""
    return f"nnwatch{who} [{f.severity}] {f.check}: {_one_line(f.message)}{_extra(consequences, also)} Runbook: {f.runbook_url}"


def _extra(consequences: str, also: Sequence[str]) -> str:
    """The other layers and the consequences of an incident, as one sentence each."""
    shown = [_one_line(m) for m in also[:8]]
    more = f" and {len(also) - 8} more" if len(also) > 8 else ""
    where = f" The same in {', '.join(shown)}{more}." if also else ""
    return where + (f" It also explains: {consequences} (not reported separately)." if consequences else "")


def _one_line(text: str) -> str:
    """Module names come from the user's model: a newline in one must not split a log line."""
    return text.replace("\r", " ").replace("\n", " ")


def resolved_line(f: Finding, step: int, model: str | None = None) -> str:
    where = f" in {_one_line(f.module)}" if f.module else ""
    who = f" ({model})" if model else ""
    return f"nnwatch{who} [resolved] {f.check}{where} (held from step {f.step} to {step})"


class Notifier:
    """Sends each new finding and each resolution to the log and, when configured, to a webhook."""

    def __init__(
        self,
        *,
        log_findings: bool = True,
        webhook_url: str | None = None,
        job: str | None = None,
        retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 5.0,
        max_queue: int = 256,
        sleep: Callable[[float], Any] | None = None,
        digest_seconds: float = 2.0,
        deadline: float = 30.0,
    ) -> None:
        """``digest_seconds``: how long the webhook thread gathers messages after the first of a burst before it
        posts them together (0: one post per message); ``flush()`` and ``close()`` cut the wait short.
        ``timeout``: seconds one attempt may take in all (connect, send, response), however slowly the receiver
        answers; ``deadline``: seconds one delivery may take with its retries and backoff. ``sleep``: the backoff
        wait (default: one that ``close()`` ends)."""
        self.log_findings = log_findings
        self.job = job
        self.model: Callable[[], str | None] = lambda: None
        """The watched model's name when the process watches several (set by the monitor), else None."""
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.listeners: list[Callable[[str, Finding, int, Sequence[str]], Any]] = []
        """Also told of each message, as (status "firing" or "resolved", finding, step, other modules): the local
        history and TensorBoard (set by the monitor). Must not block; a raising listener is skipped."""
        self._webhook = (_Webhook(webhook_url, retries, backoff, timeout, max_queue, sleep, self, digest_seconds,
                                  deadline) if webhook_url else None)

    def fired(self, f: Finding, consequences: str = "", also: Sequence[str] = ()) -> None:
        """A finding started to hold; ``consequences`` lists the findings it explains and ``also`` the other
        modules where the same check started to hold at the same step (all in the same line)."""
        if self.log_findings:
            log.log(_LEVEL.get(f.severity, logging.WARNING), finding_line(f, consequences, self.model(), also))
        self._tell("firing", f, f.step, also)
        if self._webhook is not None:
            self._webhook.put(self._slack(f, resolved_at=None, extra=_extra(consequences, also)))

    def resolved(self, f: Finding, step: int) -> None:
        """A finding stopped holding at ``step``."""
        if self.log_findings:
            log.info(resolved_line(f, step, self.model()))
        self._tell("resolved", f, step, ())
        if self._webhook is not None:
            self._webhook.put(self._slack(f, resolved_at=step))

    def _tell(self, status: str, f: Finding, step: int, also: Sequence[str]) -> None:
        for listener in self.listeners:
            try:
                listener(status, f, step, also)
            except Exception:  # noqa: BLE001 - one broken sink must not silence the log line or the webhook
                log.debug("nnwatch: a findings listener failed", exc_info=True)

    def _slack(self, f: Finding, resolved_at: int | None, extra: str = "") -> dict[str, Any]:
        where = f" in `{f.module}`" if f.module else ""
        job = f" ({self.job})" if self.job else ""
        if resolved_at is None:
            head = f"{_ICON.get(f.severity, '')} *[{f.severity.upper()}] {f.check}*{where}{job}"
            body = f"{f.message}{extra}\n<{f.runbook_url}|Runbook>"
        else:
            head = f":white_check_mark: *[RESOLVED] {f.check}*{where}{job}"
            body = f"held from step {f.step} to step {resolved_at}"
        return {
            "text": f"{head}: {f.message + extra if resolved_at is None else body}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"{head}\n{body}"}}],
            "nnwatch": {"check": f.check, "severity": f.severity, "module": f.module, "step": f.step,
                        "status": "firing" if resolved_at is None else "resolved", "value": f.value},
        }

    def digest(self, payloads: list[dict[str, Any]]) -> dict[str, Any]:
        """One post for a burst of messages: a line per message (at most DIGEST_LINES) and every message's
        ``nnwatch`` record under ``nnwatch.digest``."""
        if len(payloads) == 1:
            return payloads[0]
        records = [p["nnwatch"] for p in payloads]
        firing = sum(r["status"] == "firing" for r in records)
        job = f" ({self.job})" if self.job else ""
        worst = next((sev for sev in ("critical", "warning", "info")
                      if any(r["severity"] == sev and r["status"] == "firing" for r in records)), None)
        icon = _ICON.get(worst, ":white_check_mark:") if worst else ":white_check_mark:"
        head = f"{icon} *nnwatch{job}: {firing} new finding(s), {len(records) - firing} resolved*"
        lines = [p["text"] for p in payloads[:DIGEST_LINES]]
        if len(payloads) > DIGEST_LINES:
            lines.append(f"... and {len(payloads) - DIGEST_LINES} more")
        return {
            "text": head + "\n" + "\n".join(lines),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": head}}]
            + [{"type": "section", "text": {"type": "mrkdwn", "text": _clip(line)}} for line in lines],
            "nnwatch": {"digest": records},
        }

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued webhook messages are delivered or given up; True when the queue drained."""
        return self._webhook.flush(timeout) if self._webhook is not None else True

    def close(self, timeout: float = 1.5) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop the thread (within the same
        ``timeout``, whatever the receiver does); undelivered messages count as dropped."""
        if self._webhook is not None:
            self._webhook.close(timeout)

    @property
    def thread(self) -> threading.Thread | None:
        """The webhook thread (None without a webhook)."""
        return self._webhook._thread if self._webhook is not None else None


DIGEST_LINES = 20
"""Messages listed one per block in a digest post (Slack allows 50 blocks); the rest are counted."""


def _clip(text: str, limit: int = 2900) -> str:
    """Slack rejects a section text over 3,000 characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Webhook:
    def __init__(self, url: str, retries: int, backoff: float, timeout: float, max_queue: int,
                 sleep: Callable[[float], Any] | None, stats: Notifier, digest_seconds: float,
                 deadline: float) -> None:
        self._url = url
        self._digest_seconds = digest_seconds
        self._hurry = threading.Event()  # flush()/close(): post what is gathered now
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._deadline = deadline
        self._stats = stats
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._closing = threading.Event()
        self._sleep = sleep if sleep is not None else self._closing.wait  # backoff ends at once on close()
        self._request = Request()
        self._thread = threading.Thread(target=self._run, name="nnwatch-webhook", daemon=True)
        self._thread.start()

    def put(self, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(payload)
        except queue.Full:  # never block training: drop and count
            self._stats.dropped += 1

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                self._queue.task_done()
                return
            if self._closing.is_set():  # close() gave up waiting: what is left is dropped, and counted
                self._stats.dropped += 1
                self._queue.task_done()
                continue
            batch, stop = self._gather(payload)
            try:
                self._deliver(self._stats.digest(batch))
            finally:
                for _ in range(len(batch) + stop):
                    self._queue.task_done()
            if stop:
                return

    def _gather(self, first: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The messages of a burst: those arriving within digest_seconds of the first (stop: close() was asked)."""
        batch = [first]
        if self._digest_seconds <= 0:
            return batch, False
        deadline = time.monotonic() + self._digest_seconds
        while True:
            remaining = deadline - time.monotonic()
            hurry = self._hurry.is_set() or remaining <= 0  # then take only what is already queued
            try:
                nxt = self._queue.get_nowait() if hurry else self._queue.get(timeout=min(remaining, 0.05))
            except queue.Empty:
                if hurry:
                    break
                continue
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _deliver(self, payload: dict[str, Any]) -> None:
        """Post with retries; the whole delivery (attempts and backoff) ends by ``deadline`` seconds, each
        attempt by ``timeout`` seconds, however slowly the receiver answers."""
        data = json.dumps(payload).encode()
        delay = self._backoff
        end = time.monotonic() + self._deadline
        for attempt in range(1, self._retries + 1):
            try:
                self._request.send("POST", self._url, data, [("Content-Type", "application/json")],
                                   deadline=min(end, time.monotonic() + self._timeout))
                self._stats.delivered += 1
                return
            except HTTPStatusError as exc:
                reason = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:  # the request itself is wrong: no retry
                    self._give_up(reason)
                    return
            except (OSError, ValueError) as exc:  # refused, reset, timed out, aborted by close(), bad URL
                reason = type(exc).__name__
            if attempt == self._retries or self._closing.is_set() or time.monotonic() + delay >= end:
                self._give_up(reason)
                return
            log.debug("nnwatch: webhook delivery failed (%s), retry %d in %.1f s", reason, attempt, delay)
            self._sleep(delay)
            delay *= 2

    def _give_up(self, reason: str) -> None:
        self._stats.failed += 1
        if self._stats.failed == 1:
            log.warning("nnwatch: webhook delivery failed (%s); findings are still logged here", reason)

    def _wait_drained(self, deadline: float) -> bool:
        """Wait on the queue's own condition (no polling) until every message is done or ``deadline`` passes."""
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def flush(self, timeout: float) -> bool:
        self._hurry.set()
        try:
            return self._wait_drained(time.monotonic() + timeout)
        finally:
            self._hurry.clear()

    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout`` seconds; then abort the post under way, drop (and
        count) what is left and stop the thread, all within the same ``timeout``."""
        deadline = time.monotonic() + timeout
        self._hurry.set()
        self._wait_drained(deadline - min(0.1, timeout / 4))  # keep a moment to stop the thread
        self._closing.set()
        self._request.abort()
        while True:  # what is still queued is dropped, and counted
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._stats.dropped += 1
            self._queue.task_done()
        self._queue.put_nowait(None)
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))

"""Pushgateway mode, for jobs too short to be scraped: push the monitor's metrics on close() (the final
state) and, with ``push_interval``, every so many seconds from a thread that sleeps in between.

The group is ``job`` / ``instance`` (host name) / ``rank``; each push replaces the group (HTTP PUT), so the
gateway holds the latest values of each rank. The Pushgateway never forgets a group by itself: delete
finished groups (``DELETE /metrics/job/<job>/...``) or let a retention job do it.
An unreachable gateway costs one log line per outage; training never waits on it for more than ``timeout``.
Credentials in the URL (``https://user:password@gateway:9091``) are sent as HTTP basic auth and never shown:
log lines, reprs and errors carry the URL with ``***`` for the password.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway

from ..collect.distributed import RankInfo
from ..config import Options
from ..post import Request
from ..redact import redact_text, redact_url, split_credentials
from .collector import NNWatchCollector
from .source import MetricsSource

log = logging.getLogger("nnwatch")


class Pusher:
    """Pushes one monitor's metrics to a Pushgateway."""

    def __init__(self, monitor: MetricsSource, options: Options, *, timeout: float = 5.0) -> None:
        assert options.pushgateway_url
        self.url, self._user, self._password = split_credentials(options.pushgateway_url.rstrip("/"))
        self.shown_url = redact_url(options.pushgateway_url.rstrip("/"))
        """The URL as logs show it: the password replaced by ``***``."""
        self.job = options.job or _script_job()
        info = RankInfo.from_env()
        self.grouping_key = {"instance": socket.gethostname()}
        if info.distributed:
            self.grouping_key["rank"] = str(info.rank)
        self.timeout = timeout
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NNWatchCollector(monitor))
        self._guard = weakref.ref(monitor.guard)
        self.pushes = 0
        self.failures = 0
        self._failing = False
        self._stop = threading.Event()
        self._request = Request()  # close() aborts a push under way
        self._deadline = float("inf")  # close(): the final push ends by then
        self._thread: threading.Thread | None = None
        if options.push_interval:
            self._thread = threading.Thread(target=self._loop, args=(float(options.push_interval),),
                                            name="nnwatch-pushgateway", daemon=True)
            self._thread.start()

    def push(self) -> bool:
        """Push now; returns whether the gateway accepted it. Never raises."""
        try:
            push_to_gateway(self.url, job=self.job, registry=self.registry, grouping_key=self.grouping_key,
                            timeout=self.timeout, handler=self._handler)
        except Exception as exc:  # noqa: BLE001 - a gateway outage must not reach the training job
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warning("nnwatch: cannot push metrics to the Pushgateway at %s (%s); training continues, "
                            "will retry", self.shown_url, redact_text(str(exc), self._password))
            guard = self._guard()
            if guard is not None:
                with guard._lock:
                    guard.errors["pushgateway"] += 1
            return False
        if self._failing:
            log.info("nnwatch: pushing metrics to %s works again", self.shown_url)
        self._failing = False
        self.pushes += 1
        return True

    def _handler(self, url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Any:
        """prometheus_client's request handler: one request with a total deadline (``timeout`` seconds for the
        whole push, however slowly the gateway answers), basic auth from the URL's credentials, abortable."""
        def send() -> None:
            end = min(time.monotonic() + (timeout or self.timeout), self._deadline)
            auth_url = url if self._user is None else _with_credentials(url, self._user, self._password)
            self._request.send(method, auth_url, data, headers, deadline=end)
        return send

    def __repr__(self) -> str:
        return f"<nnwatch Pusher {self.shown_url} job={self.job!r} pushes={self.pushes} failures={self.failures}>"

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.push()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the periodic thread and push the final state once, within ``timeout`` seconds in all."""
        end = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, min(0.05, end - time.monotonic())))
            if self._thread.is_alive():  # a periodic push hangs: abort it
                self._request.abort()
                self._request = Request()
                self._thread.join(timeout=max(0.0, end - time.monotonic()))
            self._thread = None
        self._deadline = end
        self.push()
        self._request.abort()  # nothing may be left sending


def _with_credentials(url: str, user: str, password: str | None) -> str:
    """``url`` with ``user:password@`` again (agent.post turns it into a basic-auth header)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    userinfo = urllib.parse.quote(user, safe="") + (":" + urllib.parse.quote(password, safe="") if password is not None else "")
    return urllib.parse.urlunsplit((parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment))


def _script_job() -> str:
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = argv0.rsplit("/", 1)[-1].removesuffix(".py")
    return name or "nnwatch"


__all__ = ["Pusher"]

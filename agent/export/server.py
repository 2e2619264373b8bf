"""The /metrics endpoint of a monitor: the collector's families, rendered off the training thread into cached
bytes (agent.export.render) and served over HTTP(S) by a one-thread server (agent.export.httpd)."""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from prometheus_client import CollectorRegistry

from ..config import Options
from .collector import NNWatchCollector
from .httpd import Limits, Server
from .render import RenderCache, wants_openmetrics
from .source import MetricsSource

log = logging.getLogger("nnwatch")


class Exporter:
    """Serves a monitor's /metrics over HTTP(S) on a background thread (idle between scrapes).

    The body is rendered when a scrape finds the cached one out of date (a new snapshot since, steps since and a
    second old, or five seconds old; see RenderCache); a burst of scrapes costs one render, and each scrape only
    copies bytes.
    """

    def __init__(self, monitor: MetricsSource, options: Options, *, registry: CollectorRegistry | None = None,
                 limits: Limits = Limits()) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.collector = NNWatchCollector(monitor)
        self.registry.register(self.collector)
        self.cache = RenderCache(self.registry, _generation(monitor))
        self.url: str | None = None
        self._server: Server | None = None
        self._auth: Any = None  # agent.export.webconfig.BasicAuth when a web config names users
        port = options.port
        if port is None:
            return
        local_rank = os.environ.get("LOCAL_RANK")
        if port and local_rank and local_rank.isdigit():
            port += int(local_rank)  # one port per rank: multiprocess mode cannot run custom collectors
        context = _tls_context(options)
        if options.web_config:
            from ..webconfig import BasicAuth, load

            web = load(options.web_config)
            context = web.context()
            self._auth = BasicAuth(web.users) if web.users else None
        try:
            self._server = Server(options.addr, port, self._handle, context=context, limits=limits)
        except OSError as exc:
            log.warning("nnwatch: cannot serve /metrics on %s:%s (%s); training continues without it. "
                        "Pick another port with port=... or NNWATCH_PORT (0 picks a free one).", options.addr, port, exc)
            return
        host = options.addr
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://{host}:{self._server.port}/metrics"
        log.info("nnwatch: serving metrics at %s", self.url)

    @property
    def server(self) -> Server | None:
        """The HTTP server (None when not serving)."""
        return self._server

    def _handle(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        if method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD")], b"method not allowed\n"
        if self._auth is not None and not self._auth.allows(headers.get("authorization", "")):
            return 401, [("WWW-Authenticate", 'Basic realm="nnwatch"')], b"unauthorized\n"
        if path == "/":
            return 200, [("Content-Type", "text/html")], b'<html><body><a href="/metrics">/metrics</a></body></html>\n'
        if path != "/metrics":
            return 404, [("Content-Type", "text/plain")], b"not found: the metrics are at /metrics\n"
        compressed = "gzip" in headers.get("accept-encoding", "")
        kind, body = self.cache.body(wants_openmetrics(headers.get("accept", "")), compressed)
        extra = [("Content-Type", kind)] + ([("Content-Encoding", "gzip")] if compressed else [])
        return 200, extra, body

    def close(self) -> None:
        """Stop the server and release the port."""
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            self.registry.unregister(self.collector)
        except KeyError:
            pass


def _generation(monitor: MetricsSource) -> Any:
    """(what changes with every new snapshot, what changes with every step); the monitor is held weakly."""
    import weakref

    ref = weakref.ref(monitor)

    def generation() -> tuple[Any, Any]:
        m = ref()
        return (None, None) if m is None else (m.sampled_steps, m.steps.steps_in_process)
    return generation


def _tls_context(options: Options) -> ssl.SSLContext | None:
    """A server TLS context from ``tls_cert``/``tls_key`` (TLS 1.2 at least), or None for plain HTTP."""
    if not options.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.tls_cert, options.tls_key)
    return context


__all__ = ["Exporter"]

"""The /metrics HTTP(S) server: serves the collector's families on a background thread (idle between scrapes)."""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from ..config import Options
from .collector import NNWatchCollector
from .source import MetricsSource

log = logging.getLogger("nnwatch")


class Exporter:
    """Serves a monitor's /metrics over HTTP(S) on a background thread (idle between scrapes)."""

    def __init__(self, monitor: MetricsSource, options: Options, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.collector = NNWatchCollector(monitor)
        self.registry.register(self.collector)
        self.url: str | None = None
        self._server: Any = None
        self._thread: Any = None
        port = options.port
        if port is None:
            return
        local_rank = os.environ.get("LOCAL_RANK")
        if port and local_rank and local_rank.isdigit():
            port += int(local_rank)  # one port per rank: multiprocess mode cannot run custom collectors
        try:
            self._server, self._thread = start_http_server(
                port, addr=options.addr, registry=self.registry, certfile=options.tls_cert, keyfile=options.tls_key
            )
        except OSError as exc:
            log.warning("nnwatch: cannot serve /metrics on %s:%s (%s); training continues without it. "
                        "Pick another port with port=... or NNWATCH_PORT (0 picks a free one).", options.addr, port, exc)
            return
        bound = self._server.server_address[1]
        host = options.addr
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        scheme = "https" if options.tls_cert else "http"
        self.url = f"{scheme}://{host}:{bound}/metrics"
        log.info("nnwatch: serving metrics at %s", self.url)

    def close(self) -> None:
        """Stop the server and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.registry.unregister(self.collector)
        except KeyError:
            pass


__all__ = ["Exporter"]

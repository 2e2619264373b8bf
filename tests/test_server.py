"""The /metrics server (agent.export.httpd, agent.export.render) with real sockets: cached bytes in both formats,
plain and gzip; bounded connections and threads; per-connection deadlines; an idle TLS client blocks nobody."""

from __future__ import annotations

import gzip
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest
import torch

import agent
from agent.export.httpd import Limits
from tests.helpers import SmallMLP, require_binary, train


def _get(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None,
         timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
        return resp.status, dict(resp.headers), resp.read()


@pytest.fixture
def watched():
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=0, addr="127.0.0.1", native=False, sample_every=1, overhead_budget=None)
    yield model, opt, mon
    mon.close()


def test_scrapes_are_served_from_bytes_rendered_once_per_snapshot(watched):
    model, opt, mon = watched
    train(model, opt, steps=3)
    cache = mon.exporter.cache
    bodies = [_get(mon.url)[2] for _ in range(5)]
    assert cache.renders == 1 and len(set(bodies)) == 1  # five scrapes, one render
    train(model, opt, steps=1)  # a new snapshot
    after = _get(mon.url)[2]
    assert cache.renders == 2 and after != bodies[0]
    assert b"nnwatch_steps_total 4.0" in after


def test_gzip_and_openmetrics_are_cached_variants_of_the_same_render(watched):
    model, opt, mon = watched
    train(model, opt, steps=2)
    _, h, plain = _get(mon.url)
    _, hz, zipped = _get(mon.url, {"Accept-Encoding": "gzip"})
    assert hz["Content-Encoding"] == "gzip" and gzip.decompress(zipped) == plain
    assert h["Content-Type"].startswith("text/plain")
    _, ho, om = _get(mon.url, {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
    assert ho["Content-Type"].startswith("application/openmetrics-text") and om.rstrip().endswith(b"# EOF")
    assert mon.exporter.cache.renders == 2  # text once, OpenMetrics once; gzip only compresses
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(mon.url.replace("/metrics", "/nothing"))
    assert err.value.code == 404


def test_many_idle_connections_take_no_threads_and_scrapes_still_work(watched):
    model, opt, mon = watched
    threads = threading.active_count()
    socks = []
    try:
        host, port = "127.0.0.1", mon.exporter.server.port
        for _ in range(300):  # slow-drip clients: connect, send half a request line, wait
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"GET /met")
            socks.append(s)
        t0 = time.perf_counter()
        status, _, body = _get(mon.url)
        assert status == 200 and b"nnwatch_build_info" in body
        assert time.perf_counter() - t0 < 2
        assert threading.active_count() <= threads  # no thread per connection
        assert mon.exporter.server.connections <= mon.exporter.server.limits.max_connections
    finally:
        for s in socks:
            s.close()


def test_a_connection_that_never_completes_its_request_is_closed_at_its_deadline():
    torch.manual_seed(0)
    model = SmallMLP()
    from agent.export.server import Exporter
    from agent.config import Options

    exporter = Exporter(_Source(model), Options(port=0, addr="127.0.0.1"), limits=Limits(request_seconds=0.5))
    try:
        s = socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5)
        t0 = time.perf_counter()
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        assert s.recv(100) == b""  # closed by the server ...
        assert 0.3 < time.perf_counter() - t0 < 3  # ... at its deadline
        s.close()
    finally:
        exporter.close()


class _Source:
    """A monitor stand-in: an attached monitor's host state, for an exporter with custom limits."""

    def __init__(self, model):
        self.model = model
        self.mon = agent.attach(model, port=None, native=False)

    def __getattr__(self, name):
        return getattr(self.mon, name)


@pytest.fixture
def tls_files(tmp_path):
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_an_idle_tls_client_blocks_no_scrape(tls_files):
    cert, key = tls_files
    model = SmallMLP()
    mon = agent.attach(model, port=0, addr="127.0.0.1", tls_cert=str(cert), tls_key=str(key), native=False)
    idle = socket.create_connection(("127.0.0.1", mon.exporter.server.port), timeout=5)  # never sends a byte
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        for _ in range(3):
            t0 = time.perf_counter()
            status, _, body = _get(mon.url, context=ctx, timeout=3)
            assert status == 200 and b"nnwatch_build_info" in body
            assert time.perf_counter() - t0 < 2
    finally:
        idle.close()
        mon.close()


def test_the_cache_renders_per_snapshot_and_refreshes_step_counters_once_a_second():
    from prometheus_client import CollectorRegistry, Counter

    from agent.export.render import RenderCache

    registry = CollectorRegistry()
    hits = Counter("hits", "test counter", registry=registry)
    now, gen = [0.0], [(1, 10)]
    cache = RenderCache(registry, lambda: gen[0], max_age=5.0, step_age=1.0, clock=lambda: now[0])
    first = cache.body(False, False)[1]
    hits.inc()
    assert cache.body(False, False)[1] == first and cache.renders == 1  # nothing new: the cached bytes
    gen[0] = (1, 11)  # a step, no snapshot
    now[0] = 0.5
    assert cache.body(False, False)[1] == first  # steps alone: at most a second stale
    now[0] = 1.0
    assert cache.body(False, False)[1] != first and cache.renders == 2
    gen[0] = (2, 11)  # a new snapshot: at once
    now[0] = 1.1
    cache.body(False, False)
    assert cache.renders == 3
    now[0] = 6.2  # nothing moved, but findings may have: every max_age seconds
    cache.body(False, True)
    assert cache.renders == 4

"""close() is quick and final whatever the receivers do: hanging and slow-drip webhook receivers and Pushgateways
(real sockets, real threads), deliveries with a total deadline, failures and drops counted on /metrics, and an
interpreter exit without close() that waits at most CLOSE_SECONDS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest
from torch import nn

import agent
from agent.checks.delivery import Notifier
from agent.monitor import CLOSE_SECONDS
from tests.helpers import require_module
from tests.test_notify import FINDING, Receiver

ROOT = Path(__file__).resolve().parent.parent


class BadReceiver:
    """A TCP server that accepts and then ``hang``s (reads the request, never answers) or ``drip``s a status
    line one byte every ``every`` seconds. Records when each connection arrived."""

    def __init__(self, mode: str, every: float = 0.5) -> None:
        self.mode, self.every = mode, every
        self.accepted: list[float] = []
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/services/T0/B0/SECRET"
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(time.monotonic())
            self._conns.append(conn)
            if self.mode == "drip":
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n\r\n":
                if self._stop.wait(self.every):
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._conns:
            c.close()
        self._sock.close()


@pytest.fixture(params=["hang", "drip"])
def bad(request):
    r = BadReceiver(request.param)
    yield r
    r.close()


_BEFORE: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _threads_before_the_test():
    """Monitors another test in this worker left open keep their threads: only this test's count."""
    _BEFORE.clear()
    _BEFORE.update(threading.enumerate())
    yield


def _nnwatch_threads() -> list[threading.Thread]:
    """nnwatch threads started during the running test and still alive."""
    return [t for t in threading.enumerate()
            if t.name.startswith("nnwatch") and t.name != "nnwatch-native" and t not in _BEFORE]


_MODELS: list[nn.Module] = []  # the monitor holds its model weakly: a model nobody holds closes its monitor


def _watched(**options) -> agent.Monitor:
    _MODELS.append(nn.Linear(3, 3))
    return agent.attach(_MODELS[-1], **{"port": None, "native": False, **options})


def test_close_is_quick_when_nothing_is_pending(tmp_path):
    r = Receiver()
    try:
        times = []
        for _ in range(3):
            mon = _watched(webhook_url=r.url, port=0, addr="127.0.0.1")  # with the /metrics server too
            t0 = time.perf_counter()
            mon.close()
            times.append(time.perf_counter() - t0)
            assert not _nnwatch_threads()
        assert sorted(times)[1] < 0.1, times  # median: well under 100 ms normally
    finally:
        r.close()


def test_a_bad_webhook_receiver_cannot_hold_close_or_get_posts_after_it(bad):
    mon = _watched(webhook_url=bad.url, webhook_digest_seconds=0)
    notifier = mon.engine.notifier
    for _ in range(5):
        notifier.fired(FINDING)
    deadline = time.monotonic() + 10
    while not bad.accepted and time.monotonic() < deadline:  # the first post is under way
        time.sleep(0.01)
    t0 = time.perf_counter()
    mon.close()
    took = time.perf_counter() - t0
    assert took <= CLOSE_SECONDS, took
    assert not _nnwatch_threads()  # no nnwatch thread survives close()
    seen = len(bad.accepted)
    time.sleep(0.3)
    assert len(bad.accepted) == seen  # nothing is posted after close()
    assert notifier.delivered == 0 and notifier.failed + notifier.dropped == 5


def test_a_slow_drip_receiver_costs_one_deadline_per_delivery():
    bad = BadReceiver("drip", every=0.5)  # the status line alone would take 10 s
    try:
        n = Notifier(webhook_url=bad.url, log_findings=False, retries=1, timeout=1.0, digest_seconds=0)
        t0 = time.perf_counter()
        n.fired(FINDING)
        assert n.flush(8)
        assert n.failed == 1 and n.delivered == 0
        assert time.perf_counter() - t0 < 4  # one deadline (1 s) and no more, not a per-read timeout
        n.close()
        assert not n.thread.is_alive()
    finally:
        bad.close()


def test_a_bad_pushgateway_cannot_hold_close(bad):
    mon = _watched(pushgateway_url=f"http://u:p@127.0.0.1:{bad.port}", push_interval=0.05, job="t")
    deadline = time.monotonic() + 10
    while not bad.accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    mon.close()
    assert time.perf_counter() - t0 <= CLOSE_SECONDS
    assert not _nnwatch_threads()
    assert mon.pusher.failures >= 1 and mon.pusher.pushes == 0


def test_failures_and_drops_are_counted_on_metrics_per_sink():
    r = Receiver(statuses=[404])
    try:
        mon = _watched(webhook_url=r.url, webhook_digest_seconds=0, pushgateway_url="http://127.0.0.1:9/x")
        notifier = mon.engine.notifier
        notifier.fired(FINDING)
        assert notifier.flush(5)
        notifier.dropped += 7  # as a full queue counts them
        mon.pusher.push()  # nothing listens on port 9
        from agent.export.server import Exporter

        text = generate_latest(Exporter(mon, mon.options.__class__(port=None)).registry).decode()
        assert 'nnwatch_delivery_failures_total{sink="webhook"} 1.0' in text
        assert 'nnwatch_delivery_dropped_total{sink="webhook"} 7.0' in text
        assert 'nnwatch_delivery_failures_total{sink="pushgateway"} 1.0' in text
        assert 'nnwatch_deliveries_total{sink="webhook"} 0.0' in text
        mon.close()
    finally:
        r.close()


_EXIT = """
    import sys, time, torch, agent
    from tests.test_notify import FINDING
    model = torch.nn.Linear(2, 2)
    url = sys.argv[1] if len(sys.argv) > 1 else None
    mon = agent.attach(model, port=None, native=False, webhook_url=url, webhook_digest_seconds=0,
                       pushgateway_url=url and url.rsplit("/services", 1)[0], push_interval=0.05)
    for _ in range(20):
        mon.engine.notifier.fired(FINDING)
    time.sleep(0.3)  # posts and pushes are under way (hanging, with a bad receiver)
    print(time.time(), flush=True)
"""  # no close(): the interpreter exits with the monitor open


def _exit_seconds(*args: str) -> float:
    """Seconds from the script's last line to the end of its process."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_EXIT), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = proc.communicate(timeout=60)
    exited = time.time()
    assert proc.returncode == 0, err
    return exited - float(out.strip().splitlines()[-1])


def test_exiting_without_close_waits_at_most_close_seconds():
    bad = BadReceiver("hang")
    try:
        plain = _exit_seconds()  # the same job without receivers: the interpreter's own teardown
        hanging = _exit_seconds(bad.url)
        assert hanging - plain <= CLOSE_SECONDS + 0.25, (hanging, plain)
    finally:
        bad.close()


def test_close_is_quick_and_stops_the_history_and_tensorboard_writers(tmp_path):
    require_module("tensorboard")  # in CI a missing package fails (requirements-test.txt installs it)
    times = []
    for k in range(3):
        mon = _watched(history=str(tmp_path / f"h{k}.sqlite"), tensorboard_dir=str(tmp_path / f"tb{k}"),
                       sample_every=1)
        for _ in range(5):
            _MODELS[-1](torch.randn(2, 3)).sum().backward()
            mon.step()
        names = {t.name for t in _nnwatch_threads()}
        assert {"nnwatch-history", "nnwatch-tensorboard"} <= names
        t0 = time.perf_counter()
        mon.close()
        times.append(time.perf_counter() - t0)
        assert not _nnwatch_threads()
        written, failed, dropped = mon.delivery_counts()["history"]
        assert written >= 5 and (failed, dropped) == (0, 0)  # everything queued was written before close returned
    assert sorted(times)[1] < 0.1, times

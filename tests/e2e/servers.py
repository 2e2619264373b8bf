"""Real Prometheus and Alertmanager on 127.0.0.1 for tests, and a local HTTP receiver standing in for
Slack/PagerDuty webhooks. Reusable by any test: each start_* returns a handle with ``.url`` and ``.stop()``
(also a context manager); :class:`ServerPool` owns several and stops them all (the ``servers`` fixture in
tests/e2e/conftest.py). Binaries come from the Debian packages prometheus and prometheus-alertmanager; a
missing one skips the test locally and fails it in CI (tests.helpers.require_binary).
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tests.helpers import require_binary

ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
"""Debian names the binary prometheus-alertmanager; upstream tarballs name it alertmanager."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def http_json(url: str, payload: Any | None = None, timeout: float = 5.0) -> Any:
    """GET (or POST ``payload`` as JSON) and decode the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def alertmanager_binary() -> str:
    import shutil

    for name in ALERTMANAGER_BINARIES:
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    return require_binary(ALERTMANAGER_BINARIES[0])


@dataclass
class Process:
    """A started server binary: its URL, work directory and log; ``stop()`` terminates it (idempotent)."""

    name: str
    url: str
    proc: subprocess.Popen
    workdir: Path
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _start(name: str, argv_for_port: Callable[[int], list[str]], workdir: Path, ready_path: str,
           timeout: float, attempts: int = 3) -> Process:
    """Start a binary on a free port and wait for its readiness endpoint; retry when the port was taken."""
    last = ""
    for _ in range(attempts):
        port = free_port()
        log_path = workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv_for_port(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        server = Process(name, f"http://127.0.0.1:{port}", proc, workdir, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                http_get(server.url + ready_path, timeout=1)
                return server
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        server.stop()
        last = server.log()[-3000:]
    raise RuntimeError(f"{name} did not become ready:\n{last}")


def _write_yaml(path: Path, data: Mapping[str, Any] | str) -> Path:
    # JSON is YAML: no YAML library needed to write configs.
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1))
    return path


def start_prometheus(config: Mapping[str, Any] | str, rules: Sequence[str | Path] = (), *,
                     workdir: Path | None = None, extra_args: Iterable[str] = (), timeout: float = 30.0) -> Process:
    """Prometheus with ``config`` (a dict or YAML text; ``rule_files`` is set to ``rules``) and a fresh TSDB.

    Relative rule files are resolved against the current directory. Returns once /-/ready answers.
    """
    binary = require_binary("prometheus")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="nnwatch-prom-"))
    if not isinstance(config, str):
        config = {**config, "rule_files": [str(Path(r).resolve()) for r in rules]}
    elif rules:
        raise ValueError("pass rules inside the YAML text, or pass config as a dict")
    cfg = _write_yaml(workdir / "prometheus.yml", config)
    data = workdir / "data"

    def argv(port: int) -> list[str]:
        return [binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--log.level=warn", *extra_args]

    return _start("prometheus", argv, workdir, "/-/ready", timeout)


def start_alertmanager(config: Mapping[str, Any] | str, *, workdir: Path | None = None,
                       extra_args: Iterable[str] = (), timeout: float = 30.0) -> Process:
    """Alertmanager with ``config`` (dict or YAML text), no clustering, its own data directory."""
    binary = alertmanager_binary()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="nnwatch-am-"))
    cfg = _write_yaml(workdir / "alertmanager.yml", config)
    data = workdir / "data"

    def argv(port: int) -> list[str]:
        return [binary, f"--config.file={cfg}", f"--storage.path={data}", f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=", f"--web.external-url=http://127.0.0.1:{port}", "--log.level=warn",
                *extra_args]

    return _start("alertmanager", argv, workdir, "/-/ready", timeout)


@dataclass(frozen=True)
class Post:
    """One request the receiver got: when (wall clock, s), the path, and the decoded JSON body."""

    time: float
    path: str
    body: Any


@dataclass
class Receiver:
    """A local HTTP server that records every JSON POST (stands in for Slack and PagerDuty)."""

    _server: ThreadingHTTPServer = field(init=False)
    _thread: threading.Thread = field(init=False)
    _posts: list[Post] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with outer._lock:
                    outer._posts.append(Post(time.time(), self.path, body))
                # PagerDuty answers 202 with a JSON status; Slack answers 200 "ok". Both are accepted.
                reply = b'{"status":"success","message":"Event processed"}' if "pagerduty" in self.path else b"ok"
                self.send_response(202 if "pagerduty" in self.path else 200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-receiver", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def posts(self, path_prefix: str = "/") -> list[Post]:
        """Posts so far whose path starts with ``path_prefix``, oldest first."""
        with self._lock:
            return [p for p in self._posts if p.path.startswith(path_prefix)]

    def wait_for(self, predicate: Callable[[Post], bool], timeout: float, path_prefix: str = "/",
                 what: str = "a notification") -> Post:
        """The first post matching ``predicate`` (waits up to ``timeout`` s)."""
        return wait_until(lambda: next((p for p in self.posts(path_prefix) if predicate(p)), None), timeout,
                          what=what)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServerPool:
    """Starts servers into one work directory and stops them all in reverse order on ``close()``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self._stops: list[Callable[[], None]] = []
        self.processes: list[Process] = []

    def _dir(self, name: str) -> Path:
        d = self.workdir / f"{name}-{len(self._stops)}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start_prometheus(self, config: Mapping[str, Any] | str, rules: Sequence[str | Path] = (), **kw: Any) -> str:
        """URL of a new Prometheus (see :func:`start_prometheus`)."""
        p = start_prometheus(config, rules, workdir=self._dir("prometheus"), **kw)
        self._stops.append(p.stop)
        self.processes.append(p)
        return p.url

    def start_alertmanager(self, config: Mapping[str, Any] | str, **kw: Any) -> str:
        """URL of a new Alertmanager (see :func:`start_alertmanager`)."""
        p = start_alertmanager(config, workdir=self._dir("alertmanager"), **kw)
        self._stops.append(p.stop)
        self.processes.append(p)
        return p.url

    def receiver(self) -> Receiver:
        r = Receiver()
        self._stops.append(r.stop)
        return r

    def logs(self) -> str:
        """Every server's log, for assertion messages."""
        return "\n".join(f"--- {p.name} ({p.url})\n{p.log()[-4000:]}" for p in self.processes)

    def close(self) -> None:
        while self._stops:
            try:
                self._stops.pop()()
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass


ROOT = Path(__file__).resolve().parents[2]
SLACK_PATH = "/slack/T000/B000/XXXX"
PAGERDUTY_PATH = "/pagerduty/v2/enqueue"
ROUTING_KEY = "e2e0routing0key0000000000000000"


def shipped_alertmanager_config(receiver_url: str, secrets: Path, group_wait_s: float = 1,
                                group_interval_s: float = 2) -> dict[str, Any]:
    """alerts/alertmanager.yml as shipped, except: the secret files (written to ``secrets``) hold the local
    receiver's Slack URL and a test routing key, PagerDuty posts to the receiver, templates are found by
    absolute path, and the group timings are short."""
    import yaml

    cfg = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())
    secrets.mkdir(parents=True, exist_ok=True)
    slack_url = secrets / "slack-webhook-url"
    slack_url.write_text(f"{receiver_url}{SLACK_PATH}\n")
    routing_key = secrets / "pagerduty-routing-key"
    routing_key.write_text(f"{ROUTING_KEY}\n")
    cfg["templates"] = [str(ROOT / "alerts" / "templates" / "*.tmpl")]
    for receiver in cfg["receivers"]:
        for slack in receiver.get("slack_configs", []):
            slack["api_url_file"] = str(slack_url)
        for pd in receiver.get("pagerduty_configs", []):
            pd["routing_key_file"] = str(routing_key)
            pd["url"] = f"{receiver_url}{PAGERDUTY_PATH}"

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", f"{group_wait_s:g}s"), ("group_interval", f"{group_interval_s:g}s"),
                           ("repeat_interval", "1h")):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(cfg["route"])
    return cfg


def prometheus_alerts(url: str) -> list[dict[str, Any]]:
    """Alerts (pending and firing) of a Prometheus."""
    return http_json(f"{url}/api/v1/alerts")["data"]["alerts"]


def prometheus_query(url: str, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    return http_json(f"{url}/api/v1/query?{q}")["data"]["result"]


def alertmanager_alerts(url: str) -> list[dict[str, Any]]:
    """Alerts Alertmanager holds, with status.state (active, suppressed) and status.inhibitedBy."""
    return http_json(f"{url}/api/v2/alerts")


def push_alerts(url: str, alerts: list[dict[str, Any]]) -> None:
    """Send alerts to Alertmanager as Prometheus does (POST /api/v2/alerts)."""
    http_json(f"{url}/api/v2/alerts", alerts)


__all__ = ["shipped_alertmanager_config", "free_port", "wait_until", "start_prometheus", "start_alertmanager", "Receiver", "Post", "ServerPool",
           "Process", "prometheus_alerts", "prometheus_query", "alertmanager_alerts", "push_alerts", "http_json",
           "http_get", "alertmanager_binary"]

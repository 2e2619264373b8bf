"""Webhook delivery against a real local HTTP receiver: payload, retries with backoff, a receiver that is down."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import agent
from agent.checks.engine import Finding
from agent.checks.delivery import Notifier, finding_line
from tests.helpers import SmallMLP, train

FINDING = Finding(check="dead_units", severity="warning", module="encoder.1", step=40,
                  message="activation encoder.1: 98% of 128 units never positive. Try: check the init.", value=0.98,
                  runbook_url="https://example.invalid/runbooks.md#nnwatchdeadunits")


class Receiver:
    """A local stand-in for Slack: records JSON posts; answers with the queued status codes (then 200)."""

    def __init__(self, statuses=()):
        self.posts: list[dict] = []
        self.statuses = list(statuses)
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                status = outer.statuses.pop(0) if outer.statuses else 200
                if status == 200:
                    outer.posts.append(json.loads(body))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/SECRETTOKEN"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_payload_is_slack_format_with_firing_and_resolution(receiver):
    n = Notifier(webhook_url=receiver.url, job="train.py", log_findings=False, digest_seconds=0)
    n.fired(FINDING)
    n.resolved(FINDING, 90)
    assert n.flush(5)
    firing, resolved = receiver.posts
    assert "dead_units" in firing["text"] and "encoder.1" in firing["text"] and "train.py" in firing["text"]
    block = firing["blocks"][0]["text"]
    assert block["type"] == "mrkdwn" and "<https://example.invalid/runbooks.md#nnwatchdeadunits|Runbook>" in block["text"]
    assert firing["nnwatch"] == {"check": "dead_units", "severity": "warning", "module": "encoder.1", "step": 40,
                                 "status": "firing", "value": 0.98}
    assert "RESOLVED" in resolved["text"] and resolved["nnwatch"]["status"] == "resolved"
    assert "step 40 to step 90" in resolved["blocks"][0]["text"]["text"]
    n.close()


def test_a_burst_is_one_digest_post(receiver):
    n = Notifier(webhook_url=receiver.url, job="train.py", log_findings=False, digest_seconds=30)
    others = [Finding(check="saturated_activations", severity="warning", module=f"block{i}.act", step=50,
                      message=f"block{i}.act saturated.", value=0.9, runbook_url="https://example.invalid/r")
              for i in range(24)]
    n.fired(Finding(check="nonfinite_values", severity="critical", module=None, step=40, message="NaN loss.",
                    value=1.0, runbook_url="https://example.invalid/r"))
    for f in others:
        n.fired(f)
    n.resolved(FINDING, 60)
    t0 = time.monotonic()
    assert n.flush(5)  # flush cuts the 30 s gathering short
    assert time.monotonic() - t0 < 5
    assert len(receiver.posts) == 1
    post = receiver.posts[0]
    records = post["nnwatch"]["digest"]
    assert len(records) == 26 and records[0]["check"] == "nonfinite_values"
    assert [r["status"] for r in records].count("resolved") == 1
    assert post["text"].startswith(":rotating_light: *nnwatch (train.py): 25 new finding(s), 1 resolved*")
    assert "... and 6 more" in post["text"] and len(post["blocks"]) <= 50
    n.fired(FINDING)  # a later single message goes out on its own, unchanged
    assert n.flush(5)
    assert len(receiver.posts) == 2 and receiver.posts[1]["nnwatch"]["check"] == "dead_units"
    n.close()


def test_retries_with_backoff_then_delivers(caplog):
    r = Receiver(statuses=[500, 503, 429])
    sleeps = []
    n = Notifier(webhook_url=r.url, log_findings=False, sleep=sleeps.append, backoff=0.5)
    n.fired(FINDING)
    assert n.flush(5)
    assert r.attempts == 4 and len(r.posts) == 1
    assert sleeps == [0.5, 1.0, 2.0]
    assert n.delivered == 1 and n.failed == 0
    n.close()
    r.close()


def test_client_error_is_not_retried():
    r = Receiver(statuses=[404])
    n = Notifier(webhook_url=r.url, log_findings=False, sleep=lambda s: None)
    n.fired(FINDING)
    assert n.flush(5)
    assert r.attempts == 1 and n.failed == 1
    n.close()
    r.close()


def test_receiver_down_never_blocks_and_never_logs_the_url(caplog):
    url = f"http://127.0.0.1:{free_port()}/services/T000/B000/SECRETTOKEN"
    n = Notifier(webhook_url=url, log_findings=True, retries=3, sleep=lambda s: None, digest_seconds=0)
    t0 = time.perf_counter()
    for _ in range(50):
        n.fired(FINDING)
    assert time.perf_counter() - t0 < 0.5  # the training thread only enqueues
    assert n.flush(10)
    assert n.failed == 50 and n.delivered == 0
    text = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert "SECRETTOKEN" not in text and "webhook delivery failed" in text
    assert text.count("webhook delivery failed") == 1  # logged once
    n.close()


def test_full_queue_drops_instead_of_blocking():
    url = f"http://127.0.0.1:{free_port()}/x"
    gate = threading.Event()
    n = Notifier(webhook_url=url, log_findings=False, max_queue=2, retries=2, sleep=lambda s: gate.wait(5),
                 digest_seconds=0)
    for _ in range(10):
        n.fired(FINDING)
    assert n.dropped >= 6
    gate.set()
    n.close()


def test_log_line_says_what_where_since_and_what_to_try():
    line = finding_line(FINDING)
    assert line.startswith("nnwatch [warning] dead_units: ")
    assert "encoder.1" in line and "Try:" in line and "Runbook: https://example.invalid" in line


def test_monitor_posts_findings_to_the_webhook_from_env(receiver, monkeypatch):
    monkeypatch.setenv("NNWATCH_WEBHOOK_URL", receiver.url)
    torch.manual_seed(0)
    model = SmallMLP()
    with torch.no_grad():
        model.fc1.bias.fill_(-50.0)  # every ReLU of fc1 dead
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    train(model, opt, 12, monitor=mon)  # a dead verdict after 8 x 32 rows, then the hold
    assert mon.engine.notifier.flush(5)
    checks = {p["nnwatch"]["check"] for p in receiver.posts}
    assert "dead_units" in checks
    post = next(p for p in receiver.posts if p["nnwatch"]["check"] == "dead_units")
    assert post["nnwatch"]["module"] == "(root):relu"
    mon.close()

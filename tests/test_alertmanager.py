"""The example Alertmanager config: amtool checks, routing, inhibition and the notification texts, with a
real Alertmanager and a local receiver standing in for Slack and PagerDuty."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.e2e.servers import (PAGERDUTY_PATH, ROUTING_KEY, SLACK_PATH, ServerPool, alertmanager_alerts, push_alerts,
                               shipped_alertmanager_config, wait_until)
from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "alerts" / "alertmanager.yml"
RUNBOOK = "https://github.com/nnwatch/nnwatch/blob/main/docs/runbooks.md"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path / "servers")
    try:
        yield pool
    finally:
        pool.close()


def test_amtool_check_config() -> None:
    amtool = require_binary("amtool")
    out = subprocess.run([amtool, "check-config", str(CONFIG)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout and "1 templates" in out.stdout and "2 inhibit rules" in out.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=NNWatchNonfiniteValues", "severity=critical", "job=train"], "nnwatch-pagerduty"),
    (["alertname=NNWatchTrainingStalled", "severity=critical", "job=train"], "nnwatch-pagerduty"),
    (["alertname=NNWatchGPUMemoryNearCapacity", "severity=critical", "job=train"], "nnwatch-pagerduty"),
    (["alertname=NNWatchDeadUnits", "severity=warning", "job=train", "module=net.3"], "nnwatch-slack"),
    (["alertname=NNWatchOverfitting", "severity=info", "job=train"], "nnwatch-slack"),
    (["alertname=NNWatchDeadUnits", "job=train"], "nnwatch-slack"),  # no severity: Slack, never a page
    (["alertname=KubePodCrashLooping", "severity=critical"], "unrouted"),  # not ours
])
def test_routes(labels: list[str], receiver: str) -> None:
    amtool = require_binary("amtool")
    out = subprocess.run([amtool, "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}",
                          *labels], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receiver


def _alert(name: str, severity: str, job: str, **labels: str) -> dict:
    now = datetime.now(timezone.utc)
    return {
        "labels": {"alertname": name, "severity": severity, "job": job, "instance": "h:9945", **labels},
        "annotations": {"summary": f"{name} summary.", "description": f"{name} in {job}.", "value": "76.56%",
                        "runbook_url": f"{RUNBOOK}#{name.lower()}"},
        "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat(),
    }


def test_inhibition_and_notification_texts(servers: ServerPool, tmp_path: Path) -> None:
    receiver = servers.receiver()
    am = servers.start_alertmanager(shipped_alertmanager_config(receiver.url, tmp_path / "secrets"))
    push_alerts(am, [
        # Job a: NaN pages; its dead-units warning is a consequence and stays quiet.
        _alert("NNWatchNonfiniteValues", "critical", "a"),
        _alert("NNWatchDeadUnits", "warning", "a", module="net.3", activation="relu"),
        # Job b: the warning goes to Slack (a critical of another job inhibits nothing).
        _alert("NNWatchDeadUnits", "warning", "b", module="net.3", activation="relu"),
        # Job c: GPU memory at both tiers: the page silences the warning of the same device only.
        _alert("NNWatchGPUMemoryNearCapacity", "critical", "c", device="0"),
        _alert("NNWatchGPUMemoryNearCapacity", "warning", "c", device="0"),
        _alert("NNWatchGPUMemoryNearCapacity", "warning", "c", device="1"),
    ])
    wait_until(lambda: len(receiver.posts()) >= 4, 30, what="4 notifications")
    wait_until(lambda: all(a["status"]["state"] != "unprocessed" for a in alertmanager_alerts(am)), 10)
    inhibited = {(a["labels"]["alertname"], a["labels"]["job"], a["labels"].get("device"))
                 for a in alertmanager_alerts(am) if a["status"]["inhibitedBy"]}
    assert inhibited == {("NNWatchDeadUnits", "a", None), ("NNWatchGPUMemoryNearCapacity", "c", "0")}

    pages = receiver.posts("/pagerduty")
    slack = receiver.posts("/slack")
    assert {p.body["payload"]["custom_details"]["job"] for p in pages} == {"a", "c"}
    assert len(slack) == 2  # dead units of b; GPU warning of c (device 1 only)
    for page in pages:
        assert page.path == PAGERDUTY_PATH and page.body["routing_key"] == ROUTING_KEY
        assert page.body["event_action"] == "trigger" and page.body["payload"]["severity"] == "critical"
        assert page.body["links"][0]["href"].startswith(RUNBOOK + "#nnwatch")
        assert page.body["client"] == "nnwatch via Alertmanager"
    dead = next(p for p in slack if "NNWatchDeadUnits" in p.body["attachments"][0]["title"])
    assert dead.path == SLACK_PATH
    att = dead.body["attachments"][0]
    assert att["title"] == "[FIRING:1] NNWatchDeadUnits in job b"
    assert att["title_link"] == f"{RUNBOOK}#nnwatchdeadunits"
    assert att["color"] == "warning"
    assert att["text"].strip().splitlines() == [
        "NNWatchDeadUnits summary.",
        "NNWatchDeadUnits in b.",
        "Layer: net.3",
        "Value: 76.56%",
        "Job: b, instance h:9945",
        f"Runbook: {RUNBOOK}#nnwatchdeadunits",
    ]
    gpu = next(p for p in slack if "GPUMemory" in p.body["attachments"][0]["title"])
    assert "GPU 1" in gpu.body["attachments"][0]["text"] and "GPU 0" not in gpu.body["attachments"][0]["text"]

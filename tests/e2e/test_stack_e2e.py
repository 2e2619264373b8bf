"""`nnwatch stack`: real Prometheus and Alertmanager started by the command, scraping a real agent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import agent
from agent.ops.rules import ALERTS
from tests.e2e.servers import alertmanager_binary, free_port, http_json, wait_until
from tests.helpers import SmallMLP, require_binary, train

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_stack_scrapes_a_job_loads_every_rule_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    require_binary("prometheus")
    alertmanager_binary()
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, port=0, addr="127.0.0.1", sample_every=1)
    train(model, opt, 5, monitor=monitor)
    target = monitor.url.split("//", 1)[1].split("/", 1)[0]
    prom_port, am_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "stack", "--target", target, "--scrape-interval", "1s",
         "--prometheus-port", str(prom_port), "--alertmanager-port", str(am_port), "--duration", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Ctrl-C stops the stack" in line for line in out) or proc.poll() is not None, 60,
                   what="the stack to come up")
        assert proc.poll() is None, "".join(out)
        prom, am = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"
        text = "".join(out)
        assert prom in text and am in text and target in text

        targets = wait_until(lambda: [t for t in http_json(f"{prom}/api/v1/targets")["data"]["activeTargets"]
                                      if t["health"] == "up"], 30, what="the job scraped")
        assert targets[0]["labels"]["job"] == "nnwatch"
        loaded = {r["name"] for g in http_json(f"{prom}/api/v1/rules")["data"]["groups"] for r in g["rules"]
                  if r["type"] == "alerting"}
        assert loaded == set(ALERTS)
        assert http_json(f"{prom}/api/v1/alertmanagers")["data"]["activeAlertmanagers"][0]["url"].startswith(am)
        status = http_json(f"{am}/api/v2/status")
        assert "nnwatch-pagerduty" in status["config"]["original"]
        assert "/etc/alertmanager/secrets" not in status["config"]["original"]
        assert http_json(f"{prom}/api/v1/query?query=nnwatch_steps_total")["data"]["result"]

        state = Path(re.search(r"state in (\S+)\)", text).group(1))
        assert state.is_dir()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, "".join(out)
        assert not state.exists()  # the temporary state directory is removed
        with pytest.raises(OSError):
            http_json(f"{prom}/-/ready", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        monitor.close()

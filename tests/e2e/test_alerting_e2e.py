"""End to end: real training processes with the agent -> real Prometheus with the shipped rules -> real
Alertmanager with the shipped config -> a local receiver standing in for Slack and PagerDuty.

Three trainers run at once, each its own scrape job: a healthy one, one with a planted NaN and one with
dead ReLUs; a control file switches each fault on and off. Only the ``for`` durations (RulesConfig) and
Alertmanager's group timings, secret files and PagerDuty URL differ from what ships.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.ops.rules import RULES, RulesConfig, render_yaml
from tests.e2e.servers import (Post, ServerPool, alertmanager_alerts, prometheus_alerts, shipped_alertmanager_config,
                               wait_until)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

SCRAPE_S = 1.0
"""Scrape and rule evaluation interval of the test Prometheus (seconds)."""
TEST_FOR = {r.key: "5s" for r in RULES} | {"NNWatchNonfiniteValues": "2s"}
"""Shortened ``for``; the page comes first so that the NaN job's consequences are inhibited."""
GROUP_WAIT_S, GROUP_INTERVAL_S = 1, 2

SHIPPED = {"scrape_s": 15.0, "eval_s": 15.0, "group_wait_s": 30.0, "group_interval_s": 300.0}
"""The intervals of `nnwatch stack` and alerts/alertmanager.yml, for the latency estimate."""


class Trainer:
    """tests/e2e/trainer.py in its own process."""

    def __init__(self, fault: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.fault = fault
        self.ready = workdir / "url"
        self.control = workdir / "fault"
        self.events = workdir / "events"
        self.stop_file = workdir / "stop"
        self.log = workdir / "trainer.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("WORLD_SIZE", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "e2e" / "trainer.py"), "--fault", fault, "--ready", str(self.ready),
                 "--control", str(self.control), "--events", str(self.events), "--stop", str(self.stop_file),
                 "--max-seconds", "240"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)

    @property
    def target(self) -> str:
        return self.ready.read_text().split("//", 1)[1].split("/", 1)[0]

    def event_time(self, name: str) -> float:
        return wait_until(lambda: next((float(l.split()[1]) for l in self.events.read_text().splitlines()
                                        if l.startswith(name)), None), 10, what=f"{self.fault} {name}")

    def close(self) -> None:
        self.stop_file.touch()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _job(post: Post) -> str:
    """The job a Slack or PagerDuty notification is about (our templates put it in both)."""
    body = post.body
    if "pagerduty" in post.path:
        return body["payload"]["custom_details"]["job"]
    return body["attachments"][0]["title"].rsplit("in job ", 1)[-1]


def _is_firing(post: Post) -> bool:
    if "pagerduty" in post.path:
        return post.body["event_action"] == "trigger"
    return post.body["attachments"][0]["title"].startswith("[FIRING")


def test_faults_reach_pagerduty_and_slack_and_resolve(servers: ServerPool, tmp_path: Path) -> None:
    receiver = servers.receiver()
    am_url = servers.start_alertmanager(shipped_alertmanager_config(receiver.url, tmp_path / "secrets",
                                                                     GROUP_WAIT_S, GROUP_INTERVAL_S))
    trainers = {fault: Trainer(fault, tmp_path / fault) for fault in ("none", "nan", "dead")}
    try:
        for t in trainers.values():
            wait_until(lambda t=t: t.ready.exists() or t.proc.poll() is not None, 120, what=f"trainer {t.fault}")
            assert t.ready.exists(), t.log.read_text()[-3000:]
        jobs = {"none": "nnwatch-healthy", "nan": "nnwatch-nan", "dead": "nnwatch-dead"}
        rules = tmp_path / "nnwatch.rules.yml"
        rules.write_text(render_yaml(RulesConfig(for_durations=TEST_FOR)))
        prom_cfg = {
            "global": {"scrape_interval": f"{SCRAPE_S:g}s", "evaluation_interval": f"{SCRAPE_S:g}s"},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am_url.split("//", 1)[1]]}]}]},
            "scrape_configs": [{"job_name": jobs[f], "static_configs": [{"targets": [t.target]}]}
                               for f, t in trainers.items()],
        }
        prom_url = servers.start_prometheus(prom_cfg, [rules])
        # Healthy scrapes of every job first: the rules see the jobs before any fault.
        wait_until(lambda: len([a for a in _targets(prom_url) if a["health"] == "up"]) == 3, 30, what="3 targets up")
        time.sleep(3)

        trainers["nan"].control.touch()
        trainers["dead"].control.touch()
        nan_on = trainers["nan"].event_time("fault_on")
        dead_on = trainers["dead"].event_time("fault_on")

        page = receiver.wait_for(lambda p: _is_firing(p) and _job(p) == "nnwatch-nan", 60, "/pagerduty",
                                 "a PagerDuty trigger for the NaN job")
        slack = receiver.wait_for(lambda p: _is_firing(p) and _job(p) == "nnwatch-dead", 60, "/slack",
                                  "a Slack warning for the dead-units job")
        # PagerDuty Events v2: a critical trigger naming the alert, the job and the runbook.
        assert page.path == "/pagerduty/v2/enqueue"
        assert page.body["routing_key"] == "e2e0routing0key0000000000000000"
        assert page.body["payload"]["severity"] == "critical"
        assert "NNWatchNonfiniteValues" in page.body["payload"]["summary"]
        assert page.body["payload"]["custom_details"]["runbook_url"].endswith("#nnwatchnonfinitevalues")
        assert page.body["links"][0]["href"].endswith("#nnwatchnonfinitevalues")
        assert page.body["dedup_key"]
        # Slack: a warning naming the layer, the value, the job and the runbook.
        attachment = slack.body["attachments"][0]
        assert "NNWatchDeadUnits" in attachment["title"] and attachment["color"] == "warning"
        assert "Layer: act2" in attachment["text"]
        assert "Value: 7" in attachment["text"]  # 75% or more of act2's units
        assert "Job: nnwatch-dead" in attachment["text"]
        assert "docs/runbooks.md#nnwatchdeadunits" in attachment["text"]
        assert attachment["title_link"].endswith("#nnwatchdeadunits")

        fire_latency = {"nan": page.time - nan_on, "dead": slack.time - dead_on}
        # NaN activations also look like dead units: Alertmanager holds that warning but inhibits it.
        suppressed = wait_until(lambda: [a for a in alertmanager_alerts(am_url)
                                         if a["labels"].get("job") == "nnwatch-nan" and a["status"]["inhibitedBy"]],
                                30, what="an inhibited warning of the NaN job")
        assert {a["labels"]["severity"] for a in suppressed} == {"warning"}
        print("\ninhibited by the NaN page:", sorted({a["labels"]["alertname"] for a in suppressed}))

        trainers["nan"].control.unlink()
        trainers["dead"].control.unlink()
        nan_off = trainers["nan"].event_time("fault_off")
        dead_off = trainers["dead"].event_time("fault_off")
        resolve = receiver.wait_for(lambda p: p.body["event_action"] == "resolve" and _job(p) == "nnwatch-nan", 60,
                                    "/pagerduty", "a PagerDuty resolve for the NaN job")
        slack_ok = receiver.wait_for(lambda p: p.body["attachments"][0]["title"].startswith("[RESOLVED")
                                     and _job(p) == "nnwatch-dead", 60, "/slack", "a Slack resolution")
        assert resolve.body["dedup_key"] == page.body["dedup_key"]
        assert "RESOLVED: Many units of an activation layer never activate." in slack_ok.body["attachments"][0]["text"]
        assert slack_ok.body["attachments"][0]["color"] == "good"
        resolve_latency = {"nan": resolve.time - nan_off, "dead": slack_ok.time - dead_off}

        # The healthy job sent nothing, and the NaN job's consequences (e.g. NaN activations counted as dead
        # units) never reached Slack while its page was open: inhibited by the critical alert.
        time.sleep(GROUP_INTERVAL_S + 1)
        posts = receiver.posts()
        assert not [p for p in posts if _job(p) == "nnwatch-healthy"], posts
        # While the NaN is there nothing of it reaches Slack. Once it is gone the page and its consequences
        # resolve in the same evaluation; Alertmanager may lift the inhibition a moment before it hears that a
        # consequence resolved too, and post it once: that race is Alertmanager's, not a leak of the fault.
        leaked = [p for p in receiver.posts("/slack") if _job(p) == "nnwatch-nan" and _is_firing(p) and p.time < nan_off]
        assert not leaked, [(p.time - resolve.time, p.body["attachments"][0]["title"]) for p in leaked]
        assert not [p for p in receiver.posts("/pagerduty") if _job(p) != "nnwatch-nan"]
        assert not [a for a in prometheus_alerts(prom_url) if a["labels"].get("job") == "nnwatch-healthy"]
        t0 = min(nan_on, dead_on)
        print("\nnotifications (s after the faults, receiver, job, firing/resolved):")
        for p in posts:
            print(f"  {p.time - t0:6.1f} {p.path.split('/')[1]:9} {_job(p):16} {'firing' if _is_firing(p) else 'resolved'}")
    except (AssertionError, TimeoutError):
        print(servers.logs())
        for t in trainers.values():
            print(f"--- trainer {t.fault}\n{t.log.read_text()[-2000:]}")
        raise
    finally:
        for t in trainers.values():
            t.close()

    _report(fire_latency, resolve_latency)


def _targets(prom_url: str) -> list[dict[str, Any]]:
    from tests.e2e.servers import http_json

    return http_json(f"{prom_url}/api/v1/targets")["data"]["activeTargets"]


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def _report(fire: dict[str, float], resolve: dict[str, float]) -> None:
    """Print measured latencies and the same path at the shipped intervals (worst case adds one scrape and
    one evaluation interval to ``for`` and group_wait; a resolution waits for the next group_interval)."""
    shipped_for = {"nan": next(r.default_for for r in RULES if r.key == "NNWatchNonfiniteValues"),
                   "dead": next(r.default_for for r in RULES if r.key == "NNWatchDeadUnits")}
    lines = ["alerting latency, fault -> notification (test: scrape/eval 1 s, for 2 s NaN / 5 s others, "
             f"group_wait {GROUP_WAIT_S} s, group_interval {GROUP_INTERVAL_S} s):"]
    for k, name in (("nan", "NaN -> PagerDuty"), ("dead", "dead units -> Slack")):
        base = _seconds(shipped_for[k]) + SHIPPED["group_wait_s"]
        worst = base + SHIPPED["scrape_s"] + SHIPPED["eval_s"]
        lines.append(f"  {name}: fired after {fire[k]:.1f} s, resolved {resolve[k]:.1f} s after the fault cleared; "
                     f"shipped (for {shipped_for[k]}): {base:.0f}-{worst:.0f} s to fire, up to "
                     f"{SHIPPED['scrape_s'] + SHIPPED['eval_s'] + SHIPPED['group_interval_s']:.0f} s to resolve")
    print("\n".join(lines))

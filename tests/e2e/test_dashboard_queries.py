"""Every panel query of the shipped dashboards returns data from a real Prometheus that scraped a real
training run with the agent (variables substituted as Grafana would).

The training run is an MLP on scikit-learn's digits with a planted dead-ReLU fault (so findings fire), a
tanh layer (saturation series), validation losses and a watched GradScaler (AMP series). Prometheus scrapes it every second and evaluates one
probe alert so ALERTS (the annotation query) has a series.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from agent.ops import dashboards as dash
from tests.e2e.servers import ServerPool, free_port, http_json, wait_until

ROOT = Path(__file__).resolve().parents[2]
RATE_INTERVAL = "4s"
"""Grafana's $__rate_interval at a 1 s scrape interval and 1 s step: max(4 x scrape, step + scrape)."""

NO_DATA_ON_CPU = {
    (dash.OVERVIEW_UID, "GPU memory allocated", "A"),
    (dash.OVERVIEW_UID, "GPU memory used of capacity", "A"),
    (dash.TRAINING_UID, "CUDA allocator", "A"),
    (dash.TRAINING_UID, "CUDA allocator", "B"),
    (dash.TRAINING_UID, "CUDA allocator", "C"),
    (dash.TRAINING_UID, "CUDA memory growth (leak slope)", "A"),
    (dash.TRAINING_UID, "GPU memory used (NVML)", "A"),
    (dash.TRAINING_UID, "GPU memory used (NVML)", "B"),
}
"""The only panel queries allowed to return nothing, and only without a GPU: CUDA allocator and NVML series
exist only there (with a GPU the run trains on it and every query must return data). No panel is rank-only:
single-process series have no rank label and every query matches rank=~".*"."""

TRAINER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn
    import agent

    port, ready, stop = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU the CUDA and NVML panels get data too
    digits = load_digits()
    x = (torch.tensor(digits.data, dtype=torch.float32) / 16.0).to(device)
    y = torch.tensor(digits.target).to(device)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).to(device)
    with torch.no_grad():
        model[0].bias[:48] = -8.0  # planted fault: 3 of 4 ReLUs of the first layer never activate
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler(device)  # loss scaling works on the CPU too: the AMP panels get data
    monitor = agent.attach(model, opt, port=port, addr="127.0.0.1", sample_every=1, num_classes=10)
    monitor.watch_scaler(scaler)
    ready.write_text(str(monitor.url))
    step, deadline = 0, time.monotonic() + 90
    with monitor:
        while not stop.exists() and time.monotonic() < deadline:
            idx = torch.randint(0, 1500, (64,), device=device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            monitor.log(loss=loss)
            if step % 10 == 0:
                with torch.no_grad():
                    model.eval()
                    monitor.log(val_loss=F.cross_entropy(model(x[1500:]), y[1500:]))
                    model.train()
            step += 1
            time.sleep(0.02)
''')

PROBE_RULES = """
groups:
  - name: dashboard-e2e
    rules:
      - alert: NNWatchDashboardProbe
        expr: nnwatch_finding_active == 1
        labels:
          severity: warning
        annotations:
          description: probe for the dashboards' alert annotation query
"""


def query(url: str, promql: str, instant: bool, end: float, span: float = 20.0) -> list[dict[str, Any]]:
    if instant:
        params = {"query": promql, "time": f"{end:.3f}"}
        path = "query"
    else:
        params = {"query": promql, "start": f"{end - span:.3f}", "end": f"{end:.3f}", "step": "1"}
        path = "query_range"
    reply = http_json(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def label_values(url: str, label: str, selector: str) -> list[str]:
    params = urllib.parse.urlencode({"match[]": selector})
    return http_json(f"{url}/api/v1/label/{label}/values?{params}")["data"]


def interpolate(expr: str, variables: dict[str, str]) -> str:
    """Grafana's interpolation: $__rate_interval, then each $name (longest names first)."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name in sorted(variables, key=len, reverse=True):
        expr = re.sub(rf"\$\{{?{name}\}}?\b", lambda _: variables[name], expr)
    assert "$" not in expr, f"uninterpolated variable in {expr}"
    return expr


def regex_value(values: list[str]) -> str:
    """What Grafana puts in a regex matcher for a selection: (a|b), regex characters escaped with a doubled
    backslash (a PromQL string literal turns it back into one)."""
    escaped = [re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


@pytest.fixture(scope="module")
def scraped_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float]]:
    """(Prometheus URL, time) after Prometheus has scraped a live training run for a few seconds."""
    tmp = tmp_path_factory.mktemp("dashboard-e2e")
    pool = ServerPool(tmp / "servers")
    (tmp / "trainer.py").write_text(TRAINER)
    ready, stop = tmp / "ready", tmp / "stop"
    port = free_port()
    log = open(tmp / "trainer.log", "wb")
    trainer = subprocess.Popen([sys.executable, str(tmp / "trainer.py"), str(port), str(ready), str(stop)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        (tmp / "probe.rules.yml").write_text(PROBE_RULES)
        url = pool.start_prometheus({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "nnwatch-e2e", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
        }, rules=[tmp / "probe.rules.yml"])
        wait_until(lambda: ready.exists() or trainer.poll() is not None, 60, what="the trainer")
        assert trainer.poll() is None, (tmp / "trainer.log").read_text()

        def enough() -> bool:
            now = time.time()
            scrapes = query(url, "count_over_time(nnwatch_steps_total[1m])", True, now)
            return bool(scrapes and float(scrapes[0]["value"][1]) >= 8
                        and query(url, 'ALERTS{alertstate="firing"}', True, now)
                        and query(url, "nnwatch_validation_loss", True, now))

        wait_until(enough, 45, interval=0.5, what="8 scrapes of the training run and a firing probe alert")
        yield url, time.time()
    finally:
        stop.touch()
        try:
            trainer.wait(20)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait(5)
        log.close()
        pool.close()


def boards() -> list[dict[str, Any]]:
    return [json.loads((ROOT / "dashboards" / name).read_text()) for name in dash.FILES.values()]


def panel_queries() -> list[tuple[str, str, str, str, bool]]:
    """(uid, panel title, refId, expr, instant) of every panel target."""
    out = []
    for board in boards():
        for p in board["panels"]:
            for t in p.get("targets", []):
                out.append((board["uid"], p["title"], t["refId"], t["expr"], bool(t.get("instant"))))
    return out


@pytest.fixture(scope="module")
def variables(scraped_run: tuple[str, float]) -> dict[str, str]:
    """Variable values as a user would pick them: the job and instance of the run, All for rank and module."""
    url, _ = scraped_run
    values: dict[str, list[str]] = {}
    chosen = {"job": ".*", "instance": ".*", "rank": ".*", "module": ".*"}
    board = json.loads((ROOT / "dashboards" / dash.FILES[dash.TRAINING_UID]).read_text())
    for v in board["templating"]["list"]:  # in order: each variable's query sees the ones before it
        if v["type"] != "query":
            continue
        selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"]).groups()
        values[v["name"]] = label_values(url, label, interpolate(selector, chosen))
        chosen[v["name"]] = regex_value(values[v["name"]]) if values[v["name"]] else v["allValue"]
    assert values["job"] == ["nnwatch-e2e"]
    assert len(values["instance"]) == 1 and values["instance"][0].startswith("127.0.0.1:")
    assert values["rank"] == []  # single process: no rank label; All (.*) still matches its series
    assert {"0", "2", "4"} <= set(values["module"]) and {"1", "3"} <= set(values["module"])  # layers, activations
    return {"job": regex_value(values["job"]), "instance": regex_value(values["instance"]), "rank": ".*",
            "module": ".*"}


@pytest.mark.e2e
def test_every_panel_query_returns_data(scraped_run: tuple[str, float], variables: dict[str, str]) -> None:
    import torch

    url, end = scraped_run
    allowed = set() if torch.cuda.is_available() else NO_DATA_ON_CPU
    empty, failures = set(), []
    all_queries = panel_queries()
    assert len(all_queries) > 50
    for uid, title, ref, expr, instant in all_queries:
        result = query(url, interpolate(expr, variables), instant, end)
        has_data = bool(result) and (instant or any(s["values"] for s in result))
        if not has_data:
            empty.add((uid, title, ref))
            if (uid, title, ref) not in allowed:
                failures.append(f"{uid} / {title} / {ref}: {interpolate(expr, variables)}")
    assert not failures, "panel queries without data:\n" + "\n".join(failures)
    assert empty == allowed, f"listed exceptions that did return data: {allowed - empty}"


@pytest.mark.e2e
def test_findings_table_names_the_planted_fault(scraped_run: tuple[str, float], variables: dict[str, str]) -> None:
    url, end = scraped_run
    (expr,) = [e for uid, title, _, e, _ in panel_queries() if uid == dash.TRAINING_UID and title == "Firing findings"]
    rows = [r["metric"] for r in query(url, interpolate(expr, variables), True, end)]
    assert {"check": "dead_units", "severity": "warning", "module": "1", "job": "nnwatch-e2e"}.items() <= \
        next(r for r in rows if r.get("check") == "dead_units").items()
    (dead,) = [e for uid, title, _, e, _ in panel_queries() if title == "Dead units now"]
    by_module = {r["metric"]["module"]: float(r["value"][1]) for r in query(url, interpolate(dead, variables), True, end)}
    assert by_module["1"] >= 0.5  # 48 of 64 units of the first ReLU were planted dead


@pytest.mark.e2e
def test_alert_annotation_query_finds_nnwatch_alerts(scraped_run: tuple[str, float],
                                                     variables: dict[str, str]) -> None:
    url, end = scraped_run
    for board in boards():
        (ann,) = board["annotations"]["list"]
        result = query(url, interpolate(ann["expr"], variables), False, end)
        assert result and all(s["metric"]["alertname"].startswith("NNWatch") for s in result)
        assert {s["metric"]["severity"] for s in result} == {"warning"}  # tagKeys: severity,module


@pytest.mark.e2e
def test_module_variable_filters_per_layer_panels(scraped_run: tuple[str, float], variables: dict[str, str]) -> None:
    url, end = scraped_run
    (grad,) = [e for uid, title, _, e, _ in panel_queries() if title == "Gradient norm per layer"]
    one_layer = query(url, interpolate(grad, {**variables, "module": "2"}), False, end)
    assert {s["metric"]["module"] for s in one_layer} == {"2"}
    every = query(url, interpolate(grad, variables), False, end)
    assert {"0", "2", "4"} <= {s["metric"]["module"] for s in every}

"""Distributed data parallel on CPU (torchrun, gloo): each rank serves its own /metrics, a real Prometheus
scrapes both ranks of three jobs at once, and the generated fleet rules (agent.ops.rules) find a planted
desync and a planted straggler while the healthy job stays silent. Also: per-module series from rank 0
only, and the Pushgateway mode against a real Pushgateway."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agent
from tests.e2e.servers import free_port, http_get, prometheus_alerts, prometheus_query, start_prometheus, wait_until
from tests.helpers import require_binary
from tests.setups.tasks import Teacher

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "setups" / "ddp_train.py"
RANK_ALERTS = ("NNWatchRankDesync", "NNWatchStragglerRank")
STEPS = {"healthy": 250, "desync": 250, "straggler": 45}


def _port_pair() -> int:
    """A base port whose successor is free too (rank 1 serves on base + LOCAL_RANK)."""
    for _ in range(50):
        base = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture
def jobs(tmp_path):
    """Start the three torchrun jobs; yields {scenario: (base port, done-file prefix)}; always cleans up."""
    procs, out = [], {}
    # Fingerprints every 100 steps (~2 s here): held between, so scrapes of both ranks compare the same step.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "NNWATCH_FINGERPRINT_EVERY": "100"}
    env.pop("NNWATCH_PORT", None)
    for scenario, steps in STEPS.items():
        base, done = _port_pair(), tmp_path / scenario
        log = open(tmp_path / f"{scenario}.log", "wb")
        procs.append((scenario, log, subprocess.Popen(
            [*_torchrun(), "--standalone", "--nproc-per-node", "2", str(SCRIPT), "--scenario", scenario,
             "--steps", str(steps), "--port", str(base), "--done", str(done), "--hold", "90"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)))
        out[scenario] = (base, done)
    try:
        yield out
    finally:
        for scenario, (_, done) in out.items():
            done.touch()
        for scenario, log, proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
        for scenario, log, proc in procs:
            assert proc.returncode == 0, f"{scenario} exited {proc.returncode}:\n" + (tmp_path / f"{scenario}.log").read_text()[-3000:]


def _rank_alerts(url: str) -> set[tuple[str, str, str]]:
    return {(a["labels"]["alertname"], a["labels"]["job"], a["labels"].get("rank", ""))
            for a in prometheus_alerts(url) if a["labels"]["alertname"] in RANK_ALERTS and a["state"] == "firing"}


def test_ddp_ranks_scraped_desync_and_straggler_alerts(jobs, tmp_path):
    require_binary("prometheus")
    from agent.ops.rules import RulesConfig, render_yaml

    # The real generated rules; only the for: of the two rank alerts is cut so that a short run can fire
    # (desync keeps 3 s: longer than the moment after a new fingerprint when one rank is not scraped yet).
    rules = tmp_path / "rules.yml"
    text = render_yaml(RulesConfig(for_durations={"NNWatchRankDesync": "3s", "NNWatchStragglerRank": "0s"}, interval="1s"))
    if "nnwatch_weight_fingerprint" not in text:
        # Rules generated before the fingerprint existed compare each rank's latest norm, i.e. different
        # steps: that false-fires on healthy runs whose steps are faster than scrapes. Use the fingerprint.
        text = text.replace("nnwatch_global_weight_norm{rank", "nnwatch_weight_fingerprint{rank")
    rules.write_text(text)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": scenario, "static_configs": [{"targets": [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]}]}
            for scenario, (base, _) in jobs.items()
        ],
    }
    (tmp_path / "prom").mkdir()
    prom = start_prometheus(config, [rules], workdir=tmp_path / "prom")
    try:
        # Every rank of every job serves its own /metrics with rank labels.
        for scenario, (base, _) in jobs.items():
            for rank in (0, 1):
                body = wait_until(lambda: http_get(f"http://127.0.0.1:{base + rank}/metrics").decode(), 60,
                                  what=f"{scenario} rank {rank} /metrics")
                assert f'rank="{rank}"' in body and f'local_rank="{rank}"' in body

        # While training, the healthy job never shows a rank alert.
        seen: set[tuple[str, str, str]] = set()
        deadline = time.monotonic() + 75
        while not all((done.parent / f"{done.name}.rank{r}.trained").exists() for _, done in jobs.values() for r in (0, 1)):
            assert time.monotonic() < deadline, "training did not finish"
            seen |= _rank_alerts(prom.url)
            time.sleep(0.5)

        def settled():
            alerts = _rank_alerts(prom.url)
            want = {("NNWatchRankDesync", "desync"), ("NNWatchStragglerRank", "straggler")}
            return alerts if want <= {(a, j) for a, j, _ in alerts} else None

        alerts = wait_until(settled, 20, interval=0.5, what="rank alerts")
        time.sleep(2)  # a few more evaluations of the final state
        alerts = _rank_alerts(prom.url)
        seen |= alerts
        assert {r for a, j, r in alerts if a == "NNWatchStragglerRank"} == {"1"}
        assert all(j == "straggler" for a, j, _ in alerts if a == "NNWatchStragglerRank")
        # With two ranks both deviate equally from their median; the desynced job is named.
        assert {j for a, j, _ in alerts if a == "NNWatchRankDesync"} == {"desync"}
        assert not [x for x in seen if x[1] == "healthy"], seen

        # Per-module series from rank 0 only; the cheap per-rank scalars from both.
        per_module = prometheus_query(prom.url, 'count by (job, rank) (nnwatch_weight_norm)')
        assert {(r["metric"]["job"], r["metric"]["rank"]) for r in per_module} == {(j, "0") for j in STEPS}
        for metric in ("nnwatch_global_weight_norm", "nnwatch_forward_time_seconds_total",
                       "nnwatch_input_wait_seconds_total", "nnwatch_step"):
            ranks = prometheus_query(prom.url, f'count by (rank) ({metric}{{job="healthy"}})')
            assert {r["metric"]["rank"] for r in ranks} == {"0", "1"}, metric
        # /metrics is rendered per snapshot or every few seconds: the last step shows within a render period.
        def final_steps() -> dict[str, float] | None:
            got = {r["metric"]["rank"]: float(r["value"][1])
                   for r in prometheus_query(prom.url, 'nnwatch_step{job="straggler"}')}
            return got if got == {"0": 45.0, "1": 45.0} else None

        wait_until(final_steps, 30, interval=0.5, what="the straggler job's last step on both ranks")
    finally:
        prom.stop()


def _start_pushgateway(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    binary = require_binary("prometheus-pushgateway")
    for _ in range(3):
        port = free_port()
        log = open(tmp_path / "pushgateway.log", "wb")
        proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: proc.poll() is None and http_get(url + "/-/ready"), 15, what="pushgateway")
            return proc, url
        except TimeoutError:
            proc.kill()
            proc.wait()
    raise RuntimeError("pushgateway did not start:\n" + (tmp_path / "pushgateway.log").read_text())


def _gateway_value(url: str, metric: str, **labels: str) -> float | None:
    for line in http_get(url + "/metrics").decode().splitlines():
        if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _short_job(monitor, steps: int) -> None:
    torch.manual_seed(0)
    task = Teacher()
    model = monitor._model_ref()
    opt = monitor._opt_ref()
    for _ in range(steps):
        x, y = task.batch()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        monitor.log(loss=loss)


def test_pushgateway_mode(tmp_path, monkeypatch):
    proc, url = _start_pushgateway(tmp_path)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")  # as rank 1 of a two-process job
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setenv("NNWATCH_PUSHGATEWAY_URL", url)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = agent.attach(model, opt, port=None, sample_every=2, job="short-job", push_interval=0.2)
        _short_job(monitor, 5)
        group = {"job": "short-job", "instance": socket.gethostname(), "rank": "1"}
        # Periodic pushes arrive while training runs.
        assert wait_until(lambda: _gateway_value(url, "nnwatch_step", **group), 10, what="periodic push") >= 1
        _short_job(monitor, 6)
        monitor.close()  # the final push
        assert _gateway_value(url, "nnwatch_step", **group) == 11
        assert _gateway_value(url, "nnwatch_global_weight_norm", **group) > 0
        assert _gateway_value(url, "nnwatch_steps_total", local_rank="1", **group) == 11
        assert monitor.pusher.failures == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_unreachable_pushgateway_logs_once_and_training_continues(caplog):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = agent.attach(model, opt, port=None, pushgateway_url=url, push_interval=0.05)
    _short_job(monitor, 5)
    time.sleep(0.3)
    t0 = time.monotonic()
    monitor.close()
    assert time.monotonic() - t0 < 6
    assert monitor.step_index == 5
    warnings = [r for r in caplog.records if "Pushgateway" in r.getMessage()]
    assert len(warnings) == 1 and url in warnings[0].getMessage()
    assert monitor.guard.errors["pushgateway"] >= 2


def test_fsdp2_squared_norms_add_up_to_the_true_norms(tmp_path):
    # FSDP2 (fully_shard) runs on CPU with gloo: each rank holds a shard of every layer (uneven for the
    # head), exports squared norms of its shard, and sqrt(sum over ranks) must be the full tensor's norm,
    # which is what `sqrt(sum by (module) (nnwatch_gradient_squared_norm))` computes in Prometheus.
    out = tmp_path / "fsdp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*_torchrun(), "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "tests" / "setups" / "fsdp_train.py"), "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    written = sorted(p.name for p in tmp_path.glob("fsdp.rank*.json"))
    assert proc.returncode == 0, f"results written: {written}\n" + proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"fsdp.rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["sharded"] and r["per_module"]  # every rank exports its shards' squares
        assert r["errors"] == {} and r["findings"] == []
        names = {e["name"] for e in r["exported"]}
        # A shard's plain norm is no total, and shards never agree: no norms, no desync fingerprint.
        assert not names & {"nnwatch_global_weight_norm", "nnwatch_weight_norm", "nnwatch_gradient_norm",
                            "nnwatch_weight_fingerprint"}

    def total(name: str, module: str | None) -> float:
        return math.sqrt(sum(e["value"] for r in ranks for e in r["exported"]
                             if e["name"] == name and e["labels"].get("module") == module))

    for kind, ref_key in (("gradient", "grad_ref"), ("weight", "weight_ref")):
        ref = ranks[0][ref_key]
        for module, norm in ref.items():
            assert total(f"nnwatch_{kind}_squared_norm", module) == pytest.approx(norm, rel=1e-5), (kind, module)
            # and one rank alone is visibly not the total
            alone = [e["value"] for e in ranks[0]["exported"]
                     if e["name"] == f"nnwatch_{kind}_squared_norm" and e["labels"]["module"] == module][0]
            assert math.sqrt(alone) < 0.95 * norm
        whole = math.sqrt(sum(v * v for v in ref.values()))
        assert total(f"nnwatch_global_{kind}_squared_norm", None) == pytest.approx(whole, rel=1e-5)


def test_rank_selection_and_fingerprint_grid():
    from agent.collect.distributed import RankInfo, exports_per_module, next_fingerprint, parse_ranks, unwrap

    assert parse_ranks("0") == {0} and parse_ranks(" 0, 8 ") == {0, 8} and parse_ranks("all") is None
    for bad in ("", "x", "-1"):
        with pytest.raises(ValueError):
            parse_ranks(bad)
    with pytest.raises(ValueError, match="per_module_ranks"):
        agent.attach(nn.Linear(2, 2), port=None, per_module_ranks="first")
    info = RankInfo.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (info.rank, info.local_rank, info.world_size, info.distributed) == (3, 1, 4, True)
    assert not RankInfo.from_env({}).distributed
    assert exports_per_module("0", RankInfo.from_env({}), sharded=False)  # single process: always
    assert not exports_per_module("0", info, sharded=False)
    assert exports_per_module("0,3", info, sharded=False) and exports_per_module("all", info, sharded=False)
    assert exports_per_module("0", info, sharded=True)  # shards differ: every rank

    # The fingerprint is taken on grid steps only and held in between.
    fp = None
    seen = []
    for step in range(0, 260, 10):
        fp = next_fingerprint(fp, step, 100, float(step))
        seen.append(fp)
    assert seen[0] == (0, 0.0) and seen[9] == (0, 0.0) and seen[10] == (100, 100.0) and seen[-1] == (200, 200.0)
    assert next_fingerprint((100, 1.0), 105, 100, 2.0) == (100, 1.0)  # an off-grid sample changes nothing

    model = nn.Linear(2, 2)
    inner, hooked, compiled = unwrap(torch.nn.DataParallel(model))
    assert inner is model and hooked is model and not compiled


def test_grid_steps_are_sampled_under_an_adaptive_schedule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with agent.attach(model, opt, port=None, sample_every=7, overhead_budget=0.05, fingerprint_every=10) as monitor:
        sampled = []
        task = Teacher()
        for _ in range(31):
            sampled.append(monitor._sampled)
            x, y = task.batch()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        assert all(sampled[s] for s in (0, 10, 20, 30))  # on every rank alike
        assert monitor.fingerprint[0] == 30

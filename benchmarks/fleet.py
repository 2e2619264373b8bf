"""What the agent and the shipped rules cost for a fleet: J jobs x R ranks scraped by one real Prometheus.

    python -m benchmarks.fleet --jobs 2 --ranks 100 [--quick] [--remote-write] [--out FILE]

One process serves the J x R /metrics endpoints (benchmarks.fleet_source: the agent's real collector over
snapshots recorded from a real training run; rank 0 exports the per-module series, the other ranks the cheap
scalars) on one port, at /job/<j>/rank/<r>/metrics. A real Prometheus scrapes every endpoint as its own
target (job label ``nnwatch-fleet-<j>``, instance ``fleet-<j>-<r>:9945``) and evaluates alerts/nnwatch.rules.yml
as generated, with time scaled down: a scrape interval of ``--scrape-interval`` stands for the chart's 15 s,
and every ``for:``, range window and time threshold of the rules is divided by the same factor
(:func:`scaled_rules`). Alerts go to a real Alertmanager with alerts/alertmanager.yml.

After a warm-up it plants three faults: a NaN on one rank of one job (the recorded snapshot after a NaN
weight), a straggler (one rank's own forward time triples) and a hung rank (its steps stop). It measures the
series per rank, Prometheus' head series, scrape durations, each rule group's evaluation time, Prometheus'
memory and CPU, and the time from each fault to its alert in Alertmanager's API with the right job and rank
labels. With ``--remote-write`` Prometheus also remote-writes to a single-node VictoriaMetrics, and every
panel query of the shipped dashboards is run against both: each one that answers from Prometheus must answer
from VictoriaMetrics. The last line printed is one JSON object with the figures (docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from agent.checks.catalogue import BY_NAME
from agent.export.httpd import Limits, Server
from agent.ops import dashboards as dash
from agent.ops.rules import RULES, RulesConfig, render_groups
from agent.ops.stack import stop_process

from .fleet_source import RankClock, Recording, Template, record, render_template

ROOT = Path(__file__).resolve().parents[1]
CHART_SCRAPE_SECONDS = 15.0
"""The Helm chart's PodMonitor interval: the scrape interval the scaled-down run stands for."""
STEP_SECONDS = 1.5
"""A training step of the simulated fleet, before scaling (a mid-size DDP job)."""
FAULTS = {"nan": "nonfinite_values", "straggler": "NNWatchStragglerRank", "hung": "training_stalled"}
"""Planted fault -> the check (or fleet alert) that must report it."""


# -- time scaling of the rules ---------------------------------------------------------------------
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")


def seconds(duration: str) -> float:
    """A Prometheus duration (one unit: 30s, 5m, 1h) in seconds."""
    m = _DURATION.match(duration)
    if not m:
        raise ValueError(f"not a single-unit Prometheus duration: {duration!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _fmt(sec: float) -> str:
    ms = round(sec * 1000)
    if sec > 0:
        ms = max(1, ms)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scaled_rules(scale: float, interval: float) -> list[dict[str, Any]]:
    """The shipped rule groups with every ``for:``, range window ``[5m]`` and time threshold divided by
    ``scale``, evaluated every ``interval`` seconds. ``scale`` 1 is the shipped file."""
    stalled = BY_NAME["training_stalled"].thresholds["min_seconds"]
    config = RulesConfig(for_durations={r.key: _fmt(seconds(r.default_for) / scale) for r in RULES},
                         thresholds={"training_stalled.min_seconds": stalled / scale}, interval=_fmt(interval))
    groups = render_groups(config)
    window = re.compile(r"\[(\d+(?:ms|s|m|h|d))\]")
    for g in groups:
        for rule in g["rules"]:
            rule["expr"] = window.sub(lambda m: f"[{_fmt(seconds(m.group(1)) / scale)}]", rule["expr"])
    return groups


# -- servers -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def get_json(url: str, timeout: float = 10.0) -> Any:
    return json.loads(get(url, timeout))


@dataclass
class Proc:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(f"benchmarks.fleet: {names[0]} not found (Debian package; see the Makefile's system-deps)")


def start(name: str, argv: Callable[[int], list[str]], workdir: Path, ready: str, timeout: float = 60) -> Proc:
    """Start a server binary on a free port and wait for its readiness path (retry if the port was taken)."""
    for _ in range(3):
        port = free_port()
        log = workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv(port), stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        p = Proc(name, f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                get(p.url + ready, timeout=2)
                return p
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        p.stop()
    raise RuntimeError(f"{name} did not become ready:\n{p.tail()}")


# -- the fleet ---------------------------------------------------------------------------------------
@dataclass
class Endpoint:
    job: int
    rank: int
    clock: RankClock
    template: Template


@dataclass
class Fleet:
    """J x R endpoints served from one port by the agent's own HTTP server."""

    recording: Recording
    jobs: int
    ranks: int
    step_seconds: float
    endpoints: dict[tuple[int, int], Endpoint] = field(default_factory=dict)
    scrapes: int = 0

    def __post_init__(self) -> None:
        start = time.time()
        sample_every = self.recording.monitor.schedule.interval
        for j in range(self.jobs):
            for r in range(self.ranks):
                tpl = render_template(self.recording, self.recording.healthy, r, self.ranks)
                clock = RankClock(start - 30 * self.step_seconds, self.step_seconds, self.recording.batch, sample_every)
                self.endpoints[(j, r)] = Endpoint(j, r, clock, tpl)
        self.server = Server("127.0.0.1", 0, self._handle,
                             limits=Limits(max_connections=self.jobs * self.ranks + 64, request_seconds=120))

    def _handle(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = path.split("/")  # /job/<j>/rank/<r>/metrics
        try:
            ep = self.endpoints[(int(parts[2]), int(parts[4]))]
        except (IndexError, ValueError, KeyError):
            return 404, [("Content-Type", "text/plain")], b"not found\n"
        self.scrapes += 1
        body = ep.template.fill(ep.clock.values(time.time()))
        return 200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body

    @property
    def port(self) -> int:
        return self.server.port

    def plant_nan(self, j: int, r: int) -> None:
        ep = self.endpoints[(j, r)]
        ep.template = render_template(self.recording, self.recording.nan, r, self.ranks)

    def scrape_config(self, interval: float) -> list[dict[str, Any]]:
        return [{
            "job_name": f"nnwatch-fleet-{j}",
            "scrape_interval": _fmt(interval), "scrape_timeout": _fmt(interval * 0.9),
            "static_configs": [{"targets": [f"127.0.0.1:{self.port}"],
                                "labels": {"__metrics_path__": f"/job/{j}/rank/{r}/metrics",
                                           "instance": f"fleet-{j}-{r}:9945"}} for r in range(self.ranks)],
        } for j in range(self.jobs)]

    def close(self) -> None:
        self.server.close()


def job_name(j: int) -> str:
    return f"nnwatch-fleet-{j}"


# -- measurements ------------------------------------------------------------------------------------
def prom_metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A server's own /metrics: name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(get(url + "/metrics").decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def query(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    reply = get_json(f"{url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=30)
    return reply["data"]["result"]


def query_range(url: str, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    reply = get_json(f"{url}/api/v1/query_range?{urllib.parse.urlencode(params)}", timeout=30)
    return reply["data"]["result"]


def scalar(url: str, promql: str) -> float | None:
    res = query(url, promql)
    return float(res[0]["value"][1]) if res else None


@dataclass
class Samples:
    """Readings of Prometheus' own metrics taken during the run."""

    head_series: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    groups: dict[str, list[float]] = field(default_factory=dict)
    missed: dict[str, float] = field(default_factory=dict)
    """Evaluations each group skipped because the previous one overran the interval (latest count)."""

    def take(self, prom: str) -> None:
        m = prom_metrics(prom)
        self.head_series += [v for _, v in m.get("prometheus_tsdb_head_series", [])]
        self.rss += [v for _, v in m.get("process_resident_memory_bytes", [])]
        for labels, v in m.get("prometheus_rule_group_last_duration_seconds", []):
            self.groups.setdefault(labels["rule_group"].rsplit(";", 1)[-1], []).append(v)
        for labels, v in m.get("prometheus_rule_group_iterations_missed_total", []):
            self.missed[labels["rule_group"].rsplit(";", 1)[-1]] = v


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "max": max(values)}


def matching_alerts(am: str) -> list[dict[str, Any]]:
    return get_json(f"{am}/api/v2/alerts")


# -- dashboards against the remote-write store ------------------------------------------------------
def dashboard_queries() -> list[tuple[str, str, str, str, bool]]:
    """(uid, panel title, refId, expr, instant) of every panel target of the shipped dashboards."""
    out = []
    for uid, name in dash.FILES.items():
        board = json.loads((ROOT / "dashboards" / name).read_text())
        for p in board["panels"]:
            for t in p.get("targets", []):
                out.append((uid, p["title"], t["refId"], t["expr"], bool(t.get("instant"))))
    return out


def interpolate(expr: str, variables: dict[str, str]) -> str:
    """Grafana's interpolation of $__rate_interval and the template variables (longest names first)."""
    expr = expr.replace("$__rate_interval", variables["__rate_interval"])
    for name in sorted((k for k in variables if not k.startswith("__")), key=len, reverse=True):
        expr = re.sub(rf"\$\{{?{name}\}}?\b", lambda _: variables[name], expr)
    return expr


def compare_dashboards(prom: str, vm: str, job: str, rate_interval: str, end: float) -> dict[str, Any]:
    """Run every panel query against Prometheus and VictoriaMetrics at ``end``; a query that answers from
    Prometheus must answer from VictoriaMetrics too."""
    variables = {"job": job, "instance": ".*", "rank": ".*", "module": ".*", "__rate_interval": rate_interval}
    answered, missing, empty_both = [], [], []
    t0 = time.perf_counter()
    for uid, title, ref, expr, instant in dashboard_queries():
        q = interpolate(expr, variables)
        if instant:
            p, v = query(prom, q, end), query(vm, q, end)
        else:
            p, v = query_range(prom, q, end - 60, end, 5), query_range(vm, q, end - 60, end, 5)
        name = f"{uid} / {title} / {ref}"
        if p and v:
            answered.append(name)
        elif p:
            missing.append(f"{name}: {q}")
        else:
            empty_both.append(name)
    return {"queries": len(answered) + len(missing) + len(empty_both), "answered_by_both": len(answered),
            "answered_by_prometheus_only": missing, "empty_in_both": empty_both,
            "seconds": round(time.perf_counter() - t0, 2)}


# -- the run -----------------------------------------------------------------------------------------
@dataclass
class Config:
    jobs: int
    ranks: int
    scrape_interval: float
    warmup: float
    timeout: float
    remote_write: bool
    layers: int
    workdir: Path

    @property
    def scale(self) -> float:
        return CHART_SCRAPE_SECONDS / self.scrape_interval


def planted(jobs: int, ranks: int) -> dict[str, tuple[int, int]]:
    """(job, rank) of each fault: distinct targets, none on rank 0 (rank 0's per-module series stay healthy)."""
    last = jobs - 1
    return {"nan": (0, 1), "straggler": (min(1, last), ranks // 2), "hung": (last, ranks - 1)}


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    if cfg.ranks < 4:
        raise SystemExit("benchmarks.fleet: --ranks must be at least 4 (three planted faults off rank 0)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * cfg.jobs * cfg.ranks + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    t_all = time.perf_counter()
    log(f"recording a {cfg.layers}-block transformer with the agent attached")
    rec = record(layers=cfg.layers)
    t0 = time.perf_counter()
    step_seconds = STEP_SECONDS / cfg.scale
    fleet = Fleet(rec, cfg.jobs, cfg.ranks, step_seconds)
    render_s = time.perf_counter() - t0
    s0, s1 = fleet.endpoints[(0, 0)].template.series, fleet.endpoints[(0, 1)].template.series
    log(f"{cfg.jobs * cfg.ranks} endpoints on :{fleet.port} ({render_s:.1f} s to render); {s0} series on rank 0, {s1} on others")

    procs: list[Proc] = []
    try:
        work = cfg.workdir
        (work / "rules.yml").write_text(json.dumps({"groups": scaled_rules(cfg.scale, cfg.scrape_interval)}, indent=1))
        from agent.ops.stack import alertmanager_config

        am_cfg = alertmanager_config(ROOT / "alerts" / "alertmanager.yml", ROOT / "alerts" / "templates", None, None)
        (work / "alertmanager.yml").write_text(json.dumps(am_cfg))
        am_bin = binary("prometheus-alertmanager", "alertmanager")
        am = start("alertmanager", lambda p: [am_bin, f"--config.file={work / 'alertmanager.yml'}",
                                              f"--storage.path={work / 'am-data'}", f"--web.listen-address=127.0.0.1:{p}",
                                              "--cluster.listen-address=", f"--web.external-url=http://127.0.0.1:{p}",
                                              "--log.level=warn"], work, "/-/ready")
        procs.append(am)
        vm = None
        if cfg.remote_write:
            vm_bin = binary("victoria-metrics", "victoria-metrics-prod")
            # latencyOffset 0: VictoriaMetrics hides the last 30 s from queries by default (late samples).
            vm = start("victoria-metrics", lambda p: [vm_bin, f"-httpListenAddr=127.0.0.1:{p}",
                                                      f"-storageDataPath={work / 'vm-data'}", "-retentionPeriod=1d",
                                                      "-search.latencyOffset=0s", "-search.disableCache",
                                                      "-loggerLevel=ERROR"], work, "/health")
            procs.append(vm)
        prom_cfg: dict[str, Any] = {
            "global": {"scrape_interval": _fmt(cfg.scrape_interval), "evaluation_interval": _fmt(cfg.scrape_interval),
                       "scrape_timeout": _fmt(cfg.scrape_interval * 0.9)},
            "rule_files": [str(work / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.url.removeprefix("http://")]}]}]},
            "scrape_configs": fleet.scrape_config(cfg.scrape_interval),
        }
        if vm is not None:
            prom_cfg["remote_write"] = [{"url": f"{vm.url}/api/v1/write"}]
        (work / "prometheus.yml").write_text(json.dumps(prom_cfg))
        prom_bin = binary("prometheus")
        prom = start("prometheus", lambda p: [prom_bin, f"--config.file={work / 'prometheus.yml'}",
                                              f"--storage.tsdb.path={work / 'prom-data'}",
                                              f"--web.listen-address=127.0.0.1:{p}", "--log.level=warn"], work, "/-/ready")
        procs.append(prom)
        targets = cfg.jobs * cfg.ranks
        log(f"prometheus {prom.url}, alertmanager {am.url}" + (f", victoria-metrics {vm.url}" if vm else ""))

        def all_up() -> bool:
            n = scalar(prom.url, 'count(up{job=~"nnwatch-fleet-.*"} == 1)')
            return n is not None and n >= targets
        wait(all_up, 120 + targets / 20, "every target up")
        t_up = time.monotonic()
        samples = Samples()
        while time.monotonic() - t_up < cfg.warmup:
            samples.take(prom.url)
            time.sleep(max(cfg.scrape_interval, 1.0))
        before = {a["labels"]["alertname"] for a in matching_alerts(am.url)}

        where = planted(cfg.jobs, cfg.ranks)
        plant_wall = time.time()
        cpu0, prom_cpu0 = resource.getrusage(resource.RUSAGE_SELF), _cpu(prom.url)
        fleet.plant_nan(*where["nan"])
        fleet.endpoints[where["straggler"]].clock.slow_since = plant_wall
        fleet.endpoints[where["hung"]].clock.hung_at = plant_wall
        log(f"planted at {plant_wall:.1f}: " + ", ".join(f"{k} on job {job_name(j)} rank {r}" for k, (j, r) in where.items()))
        expected = {k: (_alert_name(FAULTS[k]), job_name(j), str(r)) for k, (j, r) in where.items()}
        arrived: dict[str, float] = {}
        deadline = time.monotonic() + cfg.timeout
        last_sample = 0.0
        while len(arrived) < len(expected) and time.monotonic() < deadline:
            now = time.monotonic()
            alerts = matching_alerts(am.url)
            seen = time.time()
            for fault, (name, job, rank) in expected.items():
                if fault not in arrived and any(_matches(a, name, job, rank) for a in alerts):
                    arrived[fault] = seen - plant_wall
                    log(f"{name} for {job} rank {rank} in Alertmanager after {arrived[fault]:.1f} s")
            if now - last_sample > 2:
                samples.take(prom.url)
                last_sample = now
            time.sleep(0.25)
        window = time.time() - plant_wall
        cpu1, prom_cpu1 = resource.getrusage(resource.RUSAGE_SELF), _cpu(prom.url)
        samples.take(prom.url)

        alerts = matching_alerts(am.url)
        planted_targets = {(job, rank) for _, job, rank in expected.values()}
        others: dict[str, int] = {}
        for a in alerts:
            key = (a["labels"].get("job", ""), a["labels"].get("rank", ""))
            if key not in planted_targets:
                others[a["labels"]["alertname"]] = others.get(a["labels"]["alertname"], 0) + 1
        result: dict[str, Any] = {
            "jobs": cfg.jobs, "ranks": cfg.ranks, "targets": targets,
            "scrape_interval_s": cfg.scrape_interval, "time_scale": cfg.scale,
            "model": {"family": "transformer", "blocks": cfg.layers, "parameters": rec.params,
                      "layers_with_parameters": len(rec.healthy.snapshot.layers),
                      "activations": len(rec.healthy.snapshot.activations)},
            "series_per_rank0": s0, "series_per_other_rank": s1,
            "series_expected": cfg.jobs * (s0 + (cfg.ranks - 1) * s1),
            "head_series": _stats(samples.head_series),
            "scrape_samples": _by_rank0(prom.url, "scrape_samples_scraped"),
            "scrape_duration_s": _by_rank0(prom.url, "scrape_duration_seconds"),
            "rule_group_eval_s": {g: _stats(v) for g, v in sorted(samples.groups.items())},
            "rule_group_missed_evaluations": samples.missed,
            "slowest_rules": slowest_rules(prom.url),
            "rule_samples": rule_costs(prom.url, scaled_rules(cfg.scale, cfg.scrape_interval)),
            "prometheus_rss_bytes": _stats(samples.rss),
            "prometheus_cpu_cores": round((prom_cpu1 - prom_cpu0) / window, 3),
            "fleet_server_cpu_cores": round((cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / window, 3),
            "fleet_render_seconds": round(render_s, 2),
            "alerts": {fault: {"alert": name, "job": job, "rank": rank,
                               "for_s": _for_seconds(name, cfg.scale),
                               "latency_s": round(arrived[fault], 2) if fault in arrived else None}
                       for fault, (name, job, rank) in expected.items()},
            "alerts_before_faults": sorted(before),
            "other_alerts": others,
        }
        if vm is not None:
            end = time.time() - 2 * cfg.scrape_interval
            result["remote_write"] = {
                "store": f"victoria-metrics {_vm_version()}".strip(),
                "series": scalar(vm.url, f'count({{__name__=~"nnwatch_.*", job="{job_name(0)}"}})'),
                "series_prometheus": scalar(prom.url, f'count({{__name__=~"nnwatch_.*", job="{job_name(0)}"}})'),
                "rss_bytes": _first(prom_metrics(vm.url).get("process_resident_memory_bytes")),
                "dashboards": compare_dashboards(prom.url, vm.url, job_name(0), _fmt(4 * cfg.scrape_interval), end),
            }
        result["seconds"] = round(time.perf_counter() - t_all, 1)
        return result
    finally:
        for p in reversed(procs):
            p.stop()
        fleet.close()


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _alert_name(check_or_alert: str) -> str:
    return BY_NAME[check_or_alert].alert if check_or_alert in BY_NAME else check_or_alert


def _matches(alert: dict[str, Any], name: str, job: str, rank: str) -> bool:
    labels = alert["labels"]
    return labels.get("alertname") == name and labels.get("job") == job and labels.get("rank") == rank


def _for_seconds(alert: str, scale: float) -> float:
    (rule,) = [r for r in RULES if r.key == alert]
    return round(seconds(rule.default_for) / scale, 2)


def _cpu(url: str) -> float:
    return _first(prom_metrics(url).get("process_cpu_seconds_total")) or 0.0


def _first(values: list[tuple[dict[str, str], float]] | None) -> float | None:
    return values[0][1] if values else None


def _by_rank0(prom: str, metric: str) -> dict[str, Any]:
    """Median and max of a per-target metric over the rank-0 targets and over the other ranks."""
    out = {}
    for kind, sel in (("rank0", 'instance=~"fleet-[0-9]+-0:9945"'), ("other", 'instance!~"fleet-[0-9]+-0:9945"')):
        s = f'{metric}{{job=~"nnwatch-fleet-.*", {sel}}}'
        med, mx = scalar(prom, f"quantile(0.5, {s})"), scalar(prom, f"max({s})")
        out[kind] = {"median": med, "max": mx}
    return out


def slowest_rules(prom: str, n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` rules with the longest last evaluation (Prometheus /api/v1/rules)."""
    rules = []
    for g in get_json(f"{prom}/api/v1/rules")["data"]["groups"]:
        for r in g["rules"]:
            rules.append({"group": g["name"], "rule": r.get("name"), "seconds": r.get("evaluationTime", 0.0)})
    rules.sort(key=lambda r: -r["seconds"])
    return rules[:n]


def rule_costs(prom: str, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples each rule's expression reads in one evaluation (Prometheus query stats, independent of the
    machine's load) and its evaluation time as an instant query; per group totals and the costliest rules."""
    rules, totals = [], {}
    for g in groups:
        for r in g["rules"]:
            params = urllib.parse.urlencode({"query": r["expr"], "stats": "all"})
            reply = get_json(f"{prom}/api/v1/query?{params}", timeout=60)
            stats = reply["data"].get("stats", {})
            samples = stats.get("samples", {}).get("totalQueryableSamples")
            seconds_ = stats.get("timings", {}).get("evalTotalTime")
            rules.append({"group": g["name"], "rule": r.get("alert") or r.get("record"), "samples": samples,
                          "seconds": seconds_})
            t = totals.setdefault(g["name"], {"samples": 0, "seconds": 0.0})
            t["samples"] += samples or 0
            t["seconds"] += seconds_ or 0.0
    rules.sort(key=lambda r: -(r["samples"] or 0))
    return {"per_group": totals, "costliest": rules[:6]}


def _vm_version() -> str:
    """The installed VictoriaMetrics version (Debian's build reports none over HTTP)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "victoria-metrics"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=None, help="training jobs (default 2)")
    p.add_argument("--ranks", type=int, default=None, help="ranks per job (default 100)")
    p.add_argument("--quick", action="store_true",
                   help="CI settings: 2 jobs x 100 ranks, 0.5 s scrapes (time scale 30), short warm-up")
    p.add_argument("--scrape-interval", type=float, default=None, help="seconds (default 1; --quick 0.5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of scraping before the faults (default 30; --quick 15)")
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait for the three alerts")
    p.add_argument("--layers", type=int, default=12, help="transformer blocks of the recorded model")
    p.add_argument("--remote-write", action="store_true", help="also remote_write to VictoriaMetrics and run the dashboards' queries on it")
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    p.add_argument("--workdir", type=Path, help="keep configs, data and logs here (default: a temporary directory)")
    a = p.parse_args(argv)
    jobs = a.jobs or 2
    ranks = a.ranks or 100
    interval = a.scrape_interval or (0.5 if a.quick else 1.0)
    warmup = a.warmup if a.warmup is not None else (15.0 if a.quick else 30.0)
    tmp = None
    if a.workdir is None:
        tmp = tempfile.mkdtemp(prefix="nnwatch-fleet-")
    workdir = Path(a.workdir or tmp)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = Config(jobs, ranks, interval, warmup, a.timeout, a.remote_write, a.layers, workdir)

    def log(msg: str) -> None:
        print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    try:
        result = run(cfg, log)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    line = json.dumps(result, sort_keys=False)
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(line, flush=True)
    missing = [k for k, v in result["alerts"].items() if v["latency_s"] is None]
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())

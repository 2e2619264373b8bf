"""The fleet benchmark's ranks: /metrics bodies of J x R ranks from recorded snapshots of a real training run.

A real Monitor watches a small transformer for a few sampled steps (rank 0 of a two-rank job, so the
agent's own rules decide what rank 0 and the other ranks export); its snapshots, findings and counters are
kept per phase (healthy, then after a NaN weight was planted). Each rank of the fleet is a
:class:`RankView` of that recording with its own ``rank`` label, passed to the agent's real collector
(agent.export.collector) and rendered by prometheus_client once. The values that move every step (step
counters, step times, timestamps) are rendered as sentinels and filled in per scrape from a
:class:`RankClock`, so one process can serve thousands of ranks without re-running the collector for every
scrape (a real rank re-renders once per snapshot, agent.export.render).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from agent.collect.distributed import RankInfo, exports_per_module
from agent.export.collector import NNWatchCollector

from .models import Transformer, _token_batches, _token_loss

DYNAMIC = ("steps", "step", "sampled", "step_seconds", "step_time_total", "forward_total", "input_wait_total",
           "last_step_wall", "samples_total", "samples_per_second", "sample_time", "sample_step")
"""Values that move every step; rendered as sentinels and filled in per scrape."""
SENTINEL = {key: float(f"{k + 1}e+300") for k, key in enumerate(DYNAMIC)}
_BY_TEXT = {floatToGoString(v): key for key, v in SENTINEL.items()}
_SENTINEL_RE = re.compile(r" (" + "|".join(re.escape(s) for s in _BY_TEXT) + r")\n")


@dataclass(frozen=True)
class Phase:
    """What the monitor showed after some training: its snapshot, findings, raised counts, fingerprint."""

    snapshot: Any
    findings: tuple[Any, ...]
    raised: dict[Any, int]
    fingerprint: tuple[int, float] | None
    learning_rates: tuple[float, ...]


@dataclass
class Recording:
    """A closed real Monitor and its phases; ``healthy`` and ``nan`` (a NaN planted in a weight)."""

    monitor: Any
    healthy: Phase
    nan: Phase
    batch: int
    params: int
    layers: int


def _phase(monitor: Any) -> Phase:
    return Phase(monitor.snapshot, tuple(monitor.findings), dict(monitor.engine.raised) if monitor.engine else {},
                 monitor.fingerprint, tuple(monitor.steps.learning_rates))


def record(layers: int = 12, d_model: int = 128, steps: int = 20, sample_every: int = 5) -> Recording:
    """Train a ``layers``-block transformer a few steps with the agent attached, as rank 0 of a DDP job."""
    import agent

    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    os.environ.update({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    try:
        torch.manual_seed(0)
        model = Transformer(d_model, layers)
        batch = 8
        data = _token_batches(batch, 64)()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        monitor = agent.attach(model, opt, port=None, sample_every=sample_every, console_log=False, log_findings=False,
                               native=False)

        def train(n: int) -> None:
            for i in range(n):
                x, y = data[i % len(data)]
                opt.zero_grad()
                loss = _token_loss(model(x), y)
                loss.backward()
                opt.step()
                monitor.log(loss=loss)

        train(steps)
        healthy = _phase(monitor)
        with torch.no_grad():  # the planted fault: one NaN weight, as a bad batch or an overflow would leave
            model.blocks.layers[layers // 2].linear1.weight[0, 0] = math.nan
        train(sample_every)
        nan = _phase(monitor)
        monitor.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    params = sum(p.numel() for p in model.parameters())
    return Recording(monitor, healthy, nan, batch, params, layers)


class RankView:
    """One rank of the fleet as the collector sees it: the recording, this rank's per-module choice, and
    sentinels for every value that moves with the steps."""

    def __init__(self, recording: Recording, phase: Phase, rank: int, world: int) -> None:
        self._m = recording.monitor
        info = RankInfo(rank=rank, local_rank=rank % 8, world_size=world)
        self.per_module = exports_per_module(self._m.options.per_module_ranks, info, self._m.sharded)
        s = SENTINEL
        self.steps = SimpleNamespace(
            steps_in_process=s["steps"], last_step_seconds=s["step_seconds"], step_seconds_total=s["step_time_total"],
            forward_seconds_total=s["forward_total"], input_wait_seconds_total=s["input_wait_total"],
            last_step_wall=s["last_step_wall"], samples_total=s["samples_total"],
            samples_per_second=s["samples_per_second"], learning_rates=phase.learning_rates)
        self.step_index = s["step"]
        self.sampled_steps = s["sampled"]
        self.snapshot = dataclasses.replace(phase.snapshot, step=s["sample_step"], time=s["sample_time"])
        self.findings = list(phase.findings)
        self.engine = SimpleNamespace(raised=phase.raised)
        self.fingerprint = phase.fingerprint

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)


@dataclass(frozen=True)
class Template:
    """A rendered body split at its sentinels: literal bytes and the DYNAMIC key after each."""

    parts: tuple[bytes, ...]
    keys: tuple[str, ...]
    series: int

    def fill(self, values: dict[str, float]) -> bytes:
        out = [self.parts[0]]
        for key, part in zip(self.keys, self.parts[1:]):
            out.append(b" " + floatToGoString(values[key]).encode() + b"\n")
            out.append(part)
        return b"".join(out)


def render_template(recording: Recording, phase: Phase, rank: int, world: int) -> Template:
    """The real collector's exposition for ``rank``, split at the sentinels."""
    view = RankView(recording, phase, rank, world)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NNWatchCollector(view, extra_labels={"rank": str(rank), "local_rank": str(rank % 8)}))
    text = generate_latest(registry).decode()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    pieces = _SENTINEL_RE.split(text)
    parts = tuple(p.encode() for p in pieces[0::2])
    keys = tuple(_BY_TEXT[k] for k in pieces[1::2])
    return Template(parts, keys, series)


@dataclass
class RankClock:
    """The step counters of one rank over wall time. In DDP every rank steps together (the all-reduce waits
    for the slowest); a straggler shows in its own forward time, a hung rank stops stepping."""

    start: float
    step_seconds: float
    batch: int
    sample_every: int
    forward_share: float = 0.6
    input_wait_share: float = 0.05
    slow_since: float | None = None
    slow_factor: float = 3.0
    hung_at: float | None = None
    _slow_steps: int = field(default=0, repr=False)

    def steps_at(self, now: float) -> int:
        end = now if self.hung_at is None else min(now, self.hung_at)
        return max(0, int((end - self.start) / self.step_seconds))

    def values(self, now: float) -> dict[str, float]:
        n = self.steps_at(now)
        slow = 0 if self.slow_since is None else max(0, n - self.steps_at(self.slow_since))
        own = self.step_seconds * self.forward_share
        sample_step = (n // self.sample_every) * self.sample_every
        return {
            "steps": n, "step": n, "sampled": n // self.sample_every + 1, "step_seconds": self.step_seconds,
            "step_time_total": n * self.step_seconds,
            "forward_total": n * own + slow * own * (self.slow_factor - 1),
            "input_wait_total": n * self.step_seconds * self.input_wait_share,
            "last_step_wall": self.start + n * self.step_seconds, "samples_total": n * self.batch,
            "samples_per_second": self.batch / self.step_seconds,
            "sample_time": self.start + sample_step * self.step_seconds, "sample_step": sample_step,
        }


__all__ = ["record", "Recording", "Phase", "RankView", "Template", "render_template", "RankClock", "SENTINEL"]

"""How the agent's cost grows: /metrics series and render time vs layers, sampled-step time vs layers,
and the agent's extra memory.

Layer sweeps use many narrow Linear + ReLU branches (width 16) so that per-layer bookkeeping, not
arithmetic, is what is measured.
"""

from __future__ import annotations

import gc
import statistics
import time
import urllib.request
from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry, generate_latest
from torch import nn

import agent
from agent.export.collector import NNWatchCollector

from .models import Workload


@dataclass
class RenderPoint:
    """/metrics at one depth: series, render and scrape time (seconds), agent time per sampled step."""

    layers: int
    series: int
    module_series: int
    """Series that carry a ``module`` label."""
    render_median: float
    render_p90: float
    scrape_median: float | None
    sample_seconds: float
    """Agent time on the training thread per sampled step (guard-measured, sample_every=1)."""


class Branches(nn.Module):
    """``layers`` parallel Linear+ReLU branches of width 16, summed: many layers, healthy gradients (no
    depth), so per-layer bookkeeping is measured without findings firing on every layer."""

    def __init__(self, layers: int, width: int = 16) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def render_point(layers: int, renders: int = 25, scrape: bool = False, max_modules: int = 200) -> RenderPoint:
    """Train a ``layers``-deep MLP a few sampled steps, then time /metrics rendering (and an HTTP scrape)."""
    torch.manual_seed(0)
    model = Branches(layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, port=0 if scrape else None, sample_every=1, max_modules=max_modules)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=g)
    steps = 6
    for k in range(steps + 2):
        if k == 2:
            g0 = monitor.guard.seconds
        opt.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        monitor.log(loss=loss)
    sample_seconds = (monitor.guard.seconds - g0) / steps
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NNWatchCollector(monitor, extra_labels={}))
    times = []
    text = b""
    for _ in range(renders):
        t0 = time.perf_counter()
        text = generate_latest(registry)
        times.append(time.perf_counter() - t0)
    lines = [ln for ln in text.decode().splitlines() if ln and not ln.startswith("#")]
    scrape_median = None
    if scrape and monitor.url:
        st = []
        for _ in range(renders):
            t0 = time.perf_counter()
            with urllib.request.urlopen(monitor.url, timeout=10) as resp:
                resp.read()
            st.append(time.perf_counter() - t0)
        scrape_median = statistics.median(st)
    monitor.close()
    times.sort()
    point = RenderPoint(layers, len(lines), sum('module="' in ln for ln in lines), statistics.median(times),
                        times[int(0.9 * (len(times) - 1))], scrape_median, sample_seconds)
    del model, opt, monitor
    gc.collect()
    return point


@dataclass
class MemoryPoint:
    """The agent's own memory on one workload, bytes."""

    workload: str
    params: int
    weight_bytes: int
    copy_bytes: int
    """Scratch copy of the weights for update norms (kept between sampled steps on CPU)."""
    activation_state_bytes: int
    """Per-unit dead-unit history of every activation call site."""
    sites: int


def memory_point(workload: Workload, **options: object) -> MemoryPoint:
    """Attach with default options (or ``options``), run two sample intervals, account what the agent holds."""
    torch.manual_seed(0)
    model = workload.build().to(workload.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    monitor = agent.attach(model, opt, port=None, **options)  # type: ignore[arg-type]
    data = [(x.to(workload.device), y.to(workload.device)) for x, y in workload.batches()]
    for k in range(2 * monitor.options.sample_every + 1):
        x, y = data[k % len(data)]
        opt.zero_grad(set_to_none=True)
        loss = workload.loss(model(x), y)
        loss.backward()
        opt.step()
        monitor.log(loss=loss)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    sites = monitor.probe.sites
    act = sum(s.last_alive.numel() * s.last_alive.element_size() for s in sites.values() if s.last_alive is not None)
    point = MemoryPoint(workload.name, sum(p.numel() for p in model.parameters()), weights,
                        monitor.params.copies.kept_bytes, act, len(sites))
    monitor.close()
    del model, opt, monitor
    gc.collect()
    return point

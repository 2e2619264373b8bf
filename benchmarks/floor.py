"""The memory-bandwidth floor and the agent's statistic kernels measured against it.

Floor: the time to read every gradient and weight once (8 bytes per float32 parameter), as one dot
product over a flat buffer holding all of them: one kernel, no per-tensor overhead, nothing written.
The agent's kernels are timed on the same tensors: gradient and weight norms (the same 8 bytes per
parameter), and the update norm with the weight norm after the step. An exact update norm needs the
weights from before the step, so its own floor is a copy (a read and a write) plus one read of the
weights and the copy, on flat buffers: ``update_floor``. On CPU each tensor costs one kernel call, about a
microsecond before any data moves; ``calls`` measures that for the model's number of tensors, which for a
small model with many tensors is as much as the whole floor. Every figure is the minimum over repetitions: on
a shared machine the minimum is the least disturbed run of a deterministic kernel.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import torch

from agent.collect import native, stats
from agent.collect.updates import WeightCopies

from .models import Workload, synchronize


@dataclass
class FloorResult:
    """Kernel times of one workload, seconds (minimum over repetitions)."""

    workload: str
    params: int
    floor: float
    """One read of every gradient and weight (flat dot product)."""
    norms: float
    """agent.collect.stats.squared_norm_vector over gradients and weights: what a sampled step runs (the native
    kernels when they are built, see ``native``)."""
    update: float
    """Weight copy + fused update and weight norms (agent.collect.updates, agent.collect.stats.update_squared_norms)."""
    update_floor: float = float("nan")
    """Copy every weight once, then read the weights and the copy once, on flat buffers."""
    tensors: int = 0
    """Gradients and weights read by ``norms`` (one kernel call each on CPU)."""
    calls: float = float("nan")
    """``tensors`` dot products of one-element tensors: what ``tensors`` kernel calls cost before any data."""
    norms_torch: float = float("nan")
    """The same norms through torch ops only (one dot product per tensor): the path without native kernels."""
    native: str = ""
    """State of agent.collect.native when measured: ``ready`` means ``norms`` and ``update`` used the C++ kernels."""

    @property
    def norms_ratio(self) -> float:
        return self.norms / self.floor

    @property
    def torch_ratio(self) -> float:
        return self.norms_torch / self.floor

    @property
    def update_ratio(self) -> float:
        return self.update / self.floor

    @property
    def update_own_ratio(self) -> float:
        """The update measurement against its own floor."""
        return self.update / self.update_floor

    @property
    def gb_per_s(self) -> float:
        """Bandwidth of the floor read."""
        return 8 * self.params / self.floor / 1e9


SCRUB_BYTES = 16 * 2**20
"""Size of the buffer read before every timed call (on CPU): more than the private L2 caches of the cores
measured here (2 x 4 MiB), so that every call starts with its data out of L2, whatever ran before it. Without
it the 1M models' figures depend on the order of the calls (a flat buffer read twice in a row is half in L2)."""

_scrub: torch.Tensor | None = None


def _evict_l2() -> None:
    global _scrub
    if _scrub is None:
        _scrub = torch.ones(SCRUB_BYTES // 4)
    torch.dot(_scrub, _scrub)


def _best(fn: Callable[[], object], reps: int, device: str = "cpu") -> float:
    best = float("inf")
    for _ in range(reps):
        if device == "cpu":
            _evict_l2()
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_floor(workload: Workload, reps: int = 15) -> FloorResult:
    """Time the floor and the agent's kernels on ``workload``'s real gradients and weights."""
    torch.manual_seed(0)
    dev = workload.device
    model = workload.build().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for x, y in workload.batches()[:2]:
        opt.zero_grad(set_to_none=True)
        workload.loss(model(x.to(dev)), y.to(dev)).backward()
        opt.step()
    with torch.no_grad():
        weights = [p.detach() for p in model.parameters()]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([t.reshape(-1) for t in weights + grads])
        flat_w = torch.cat([t.reshape(-1) for t in weights])
        flat_copy = torch.empty_like(flat_w)
        copies = WeightCopies()
        copies.copy(weights)  # allocate once, as the agent does on its first sampled step

        def update() -> None:  # what a sampled optimizer step does for update and weight norms
            old = copies.copy(weights)
            stats.update_squared_norm_vectors(weights, old, overwrite_old=True)

        # Interleave the three so that machine noise hits them alike; keep each one's best.
        one = torch.ones(1, device=dev)
        count = len(weights) + len(grads)
        floor = norms = upd = upd_floor = calls = torch_ops = float("inf")
        for _ in range(reps):
            calls = min(calls, _best(lambda: [torch.dot(one, one) for _ in range(count)], 1, dev))
            floor = min(floor, _best(lambda: torch.dot(flat, flat), 1, dev))
            upd_floor = min(upd_floor, _best(lambda: (flat_copy.copy_(flat_w), torch.dot(flat_w, flat_copy)), 1, dev))
            norms = min(norms, _best(lambda: (stats.squared_norm_vector(grads), stats.squared_norm_vector(weights)), 1, dev))
            torch_ops = min(torch_ops, _best(lambda: (stats.squared_norms(grads), stats.squared_norms(weights)), 1, dev))
            upd = min(upd, _best(update, 1, dev))
    params = sum(w.numel() for w in weights)
    del model, opt, flat, flat_w, flat_copy, copies, weights, grads
    gc.collect()
    return FloorResult(workload.name, params, floor, norms, upd, upd_floor, count, calls, torch_ops, native.status().state)

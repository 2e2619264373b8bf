"""The memory-bandwidth floor and the agent's statistic kernels measured against it.

Floor: the time to read every gradient and weight once (8 bytes per float32 parameter), as one dot
product over a flat buffer holding all of them: one kernel, no per-tensor overhead, nothing written.
The agent's kernels are timed on the same tensors: gradient and weight norms (the same 8 bytes per
parameter), and the update norm with the weight norm after the step (copy the weights: a read and a
write; then one fused pass reading weights and copy: 16 bytes per parameter by construction). Every figure is the minimum over repetitions: on a shared machine the
minimum is the least disturbed run of a deterministic kernel.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import torch

from agent import stats
from agent.updates import WeightCopies

from .models import Workload


@dataclass
class FloorResult:
    """Kernel times of one workload, seconds (minimum over repetitions)."""

    workload: str
    params: int
    floor: float
    """One read of every gradient and weight (flat dot product)."""
    norms: float
    """agent.stats.squared_norms over gradients and weights."""
    update: float
    """Weight copy + fused update and weight norms (agent.updates, agent.stats.update_squared_norms)."""

    @property
    def norms_ratio(self) -> float:
        return self.norms / self.floor

    @property
    def update_ratio(self) -> float:
        return self.update / self.floor

    @property
    def gb_per_s(self) -> float:
        """Bandwidth of the floor read."""
        return 8 * self.params / self.floor / 1e9


def _best(fn: Callable[[], object], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_floor(workload: Workload, reps: int = 15) -> FloorResult:
    """Time the floor and the agent's kernels on ``workload``'s real gradients and weights."""
    torch.manual_seed(0)
    model = workload.build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for x, y in workload.batches()[:2]:
        opt.zero_grad(set_to_none=True)
        workload.loss(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        weights = [p.detach() for p in model.parameters()]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([t.reshape(-1) for t in weights + grads])
        copies = WeightCopies()
        copies.copy(weights)  # allocate once, as the agent does on its first sampled step

        def update() -> None:  # what a sampled optimizer step does for update and weight norms
            old = copies.copy(weights)
            stats.update_squared_norms(weights, old, overwrite_old=True)

        # Interleave the three so that machine noise hits them alike; keep each one's best.
        floor = norms = upd = float("inf")
        for _ in range(reps):
            floor = min(floor, _best(lambda: torch.dot(flat, flat), 1))
            norms = min(norms, _best(lambda: (stats.squared_norms(grads), stats.squared_norms(weights)), 1))
            upd = min(upd, _best(update, 1))
    params = sum(w.numel() for w in weights)
    del model, opt, flat, copies, weights, grads
    gc.collect()
    return FloorResult(workload.name, params, floor, norms, upd)

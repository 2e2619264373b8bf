"""Step-time overhead: every arm of a workload interleaved block by block in one process.

A round runs one block of ``block`` steps on each arm, in an order shuffled every round (seeded), so
slow phases of a shared machine, and the background work a peer leaves behind (wandb's service process),
hit every arm alike. The per-round ratio is an arm's mean step time over
the plain loop's mean step time in the same round; the reported figure is the median over rounds,
with the spread (quartiles) next to it. ``block`` is a multiple of the agent's default sample
interval, so every block of the default arm holds exactly one sampled step. Arms whose steps all cost
the same (everything every step, wandb log_freq=1, the naive loop) run shorter blocks.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from dataclasses import dataclass, field

from .arms import ARMS, Arm, Peers, make_arm, release
from .models import Workload


@dataclass
class OverheadResult:
    """Per-arm step times of one workload; times in seconds."""

    workload: str
    family: str
    size: str
    params: int
    block: int
    rounds: int = 0
    block_means: dict[str, list[float]] = field(default_factory=dict)
    """arm -> mean step time of each round's block."""
    max_step: dict[str, float] = field(default_factory=dict)
    """arm -> slowest single step seen (logging spikes)."""
    agent_share: dict[str, float] = field(default_factory=dict)
    """agent arm -> the agent's own measure of its time on the training thread / step time."""
    interval: dict[str, int] = field(default_factory=dict)
    """agent arm -> sampling interval at the end (the adapted one for the budget arm)."""
    load: tuple[float, float] = (0.0, 0.0)
    """1-minute load average before and after."""

    def ratios(self, arm: str) -> list[float]:
        """Per-round step-time ratio of ``arm`` to the plain loop."""
        return [a / p for a, p in zip(self.block_means[arm], self.block_means["plain"])]

    def median_ratio(self, arm: str) -> float:
        return statistics.median(self.ratios(arm))

    def spread(self, arm: str) -> tuple[float, float]:
        """Lower and upper quartile of the per-round ratios."""
        r = sorted(self.ratios(arm))
        if len(r) < 4:
            return r[0], r[-1]
        q = statistics.quantiles(r, n=4)
        return q[0], q[2]

    def amortized_ratio(self, arm: str) -> float:
        """Total time over all rounds / the plain loop's total (counts rare logging spikes)."""
        return sum(self.block_means[arm]) / sum(self.block_means["plain"])

    def plain_ms(self) -> float:
        return 1000 * statistics.median(self.block_means["plain"])


def _timed_block(arm: Arm, steps: int) -> tuple[float, float]:
    clock = time.perf_counter
    slowest = 0.0
    arm.clock.resume()
    start = clock()
    for _ in range(steps):
        t0 = clock()
        arm.step()
        slowest = max(slowest, clock() - t0)
    elapsed = clock() - start
    arm.clock.pause()
    return elapsed / steps, slowest


SHORT_BLOCK = {"agent_all": 4, "wandb_1": 4, "naive": 4}
"""Arms whose every step costs the same get shorter blocks (the slowest arms: keeps a full run short)."""


def run_overhead(
    workload: Workload,
    arms: tuple[str, ...] = ARMS,
    *,
    block: int = 10,
    min_rounds: int = 5,
    max_rounds: int = 25,
    budget_s: float = 60.0,
    log: bool = True,
) -> OverheadResult:
    """Interleave ``arms`` (must include "plain") on ``workload`` for about ``budget_s`` seconds."""
    if "plain" not in arms:
        raise ValueError("the plain loop is the reference: include 'plain' in arms")
    peers = Peers()
    built = [make_arm(name, workload, peers) for name in arms]
    for arm in built:
        arm.clock.pause()
    params = sum(p.numel() for p in built[0].model.parameters())
    result = OverheadResult(workload.name, workload.family, workload.size, params, block)
    result.load = (os.getloadavg()[0], 0.0)
    steps = {a.name: min(block, SHORT_BLOCK.get(a.name, block)) for a in built}
    try:
        # Warm-up: allocator, optimizer state, the first sampled step of every watcher.
        per_round = 0.0
        for arm in built:
            mean, _ = _timed_block(arm, 2)
            per_round += mean * steps[arm.name]
        rounds = int(max(min_rounds, min(max_rounds, budget_s // max(per_round, 1e-9))))
        for name in arms:
            result.block_means[name] = []
            result.max_step[name] = 0.0
        shuffle = random.Random(0)
        marks = {a.name: (a.monitor.guard.seconds, a.monitor.step_seconds_total) for a in built if a.monitor}
        for r in range(rounds):
            gc.collect()
            order = list(built)
            shuffle.shuffle(order)  # random, not rotated: no arm always runs right after the same one
            for arm in order:
                mean, slowest = _timed_block(arm, steps[arm.name])
                result.block_means[arm.name].append(mean)
                result.max_step[arm.name] = max(result.max_step[arm.name], slowest)
            result.rounds = r + 1
        for a in built:
            if a.monitor is not None:
                g0, s0 = marks[a.name]
                g1, s1 = a.monitor.guard.seconds, a.monitor.step_seconds_total
                result.agent_share[a.name] = (g1 - g0) / (s1 - s0) if s1 > s0 else float("nan")
                result.interval[a.name] = a.monitor.schedule.interval
    finally:
        for arm in built:
            release(arm, peers)
        peers.close()
        del built
        gc.collect()
    result.load = (result.load[0], os.getloadavg()[0])
    if log:
        parts = [f"{name} {result.median_ratio(name):.3f}" for name in arms if name != "plain"]
        print(f"  {workload.name:16s} {params / 1e6:6.1f}M plain {result.plain_ms():8.1f} ms  "
              + "  ".join(parts) + f"  ({result.rounds} rounds)", flush=True)
    return result

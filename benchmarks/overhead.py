"""Step-time overhead: every arm of a workload interleaved step by step in one process.

A round runs one training step on each arm, in an order shuffled every round (seeded), so the slow
phases of a shared machine, and the background work a peer leaves behind (wandb's service process), hit
every arm alike; a step of an arm is paired with the plain loop's step of the same round. An arm's
figure is its *amortized* ratio: the sum of its step times over the sum of the paired plain steps, so
rare expensive steps (the agent's sampled steps, wandb's logging steps) count exactly as often as they
happen. Its interval is a percentile bootstrap over chunks of consecutive rounds.

Things a naive A/B loop gets wrong, handled here:

- Where each model's memory lands moves a small model's step time by a percent or two. The run is split
  into repetitions, each building every arm afresh in a shuffled order, and a second copy of the plain
  loop (the ``control`` arm) shows what "no difference" reads as in the same run.
- Arms whose every step costs the same need fewer steps: they run every ``EVERY[arm]``-th round only.
- wandb's ``log_freq=100`` pays once per 100 of its steps. Its logging steps are known from its own step
  count, and its figure is ``((f - 1) * ordinary + logging) / f`` for ``f = 100``, which does not depend on
  how many logging steps a short window happens to hold.
- On a noisy machine the direct ratio of a cheap arm has a spread of about a percent even over hundreds
  of rounds. For the agent arms the parts are kept too (``decomposed``): the agent's own timed cost of an
  ordinary step plus the measured wall-time excess of its sampled steps, and the agent's own share.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from dataclasses import dataclass, field

from .arms import AGENT_OPTIONS, ARMS, Arm, Peers, make_arm, release
from .models import Workload, synchronize

EVERY = {"agent_all": 4, "wandb_1": 4, "naive": 4, "wandb_100": 2}
"""Arms measured every N-th round only (the rest: every round): their steps vary less, or cost more."""

PERIODIC = {"wandb_100": 100}
"""Arms that pay their cost once every N of their own steps (on steps N, 2N, ...)."""


@dataclass
class OverheadResult:
    """Per-arm step times of one workload; times in seconds."""

    workload: str
    family: str
    size: str
    params: int
    reps: int = 0
    rounds: int = 0
    """Rounds per repetition."""
    steps: dict[str, list[float]] = field(default_factory=dict)
    """arm -> every measured step time, repetitions concatenated."""
    paired: dict[str, list[float]] = field(default_factory=dict)
    """arm -> the plain loop's step time of the same round as each of the arm's steps."""
    index: dict[str, list[int]] = field(default_factory=dict)
    """arm -> the arm's own 1-based step number of each measured step (wandb log steps are multiples of 100)."""
    rep: dict[str, list[int]] = field(default_factory=dict)
    """arm -> the repetition each measured step belongs to."""
    sampled: dict[str, list[bool]] = field(default_factory=dict)
    """agent arm -> whether each measured step was a sampled step."""
    agent_seconds: dict[str, list[float]] = field(default_factory=dict)
    """agent arm -> the agent's own timed seconds inside each measured step (its guard's count)."""
    agent_share: dict[str, float] = field(default_factory=dict)
    """agent arm -> the agent's own measure of its time on the training thread / step time."""
    interval: dict[str, int] = field(default_factory=dict)
    """agent arm -> sampling interval at the end (adapted by the overhead budget)."""
    load: tuple[float, float] = (0.0, 0.0)
    """1-minute load average before and after."""

    # -- the direct comparison ----------------------------------------------------------------------
    def ratio(self, arm: str) -> float:
        """Amortized step-time ratio of ``arm`` to the plain loop (see the module docstring)."""
        return _ratio(self.steps[arm], self.paired[arm], self.index[arm], PERIODIC.get(arm))

    def interval_95(self, arm: str, chunk: int = 20, draws: int = 2000) -> tuple[float, float]:
        """95% percentile-bootstrap interval of ``ratio(arm)`` over chunks of ``chunk`` consecutive steps
        (fewer steps per chunk for an arm with too few steps for 8 chunks)."""
        s, p, k = self.steps[arm], self.paired[arm], self.index[arm]
        chunk = max(2, min(chunk, len(s) // 8))
        chunks = [range(i, min(i + chunk, len(s))) for i in range(0, len(s), chunk)]
        r = self.ratio(arm)
        if len(chunks) < 4:
            return r, r
        rng = random.Random(1)
        period = PERIODIC.get(arm)
        values = []
        for _ in range(draws):
            pick = [i for _ in chunks for i in rng.choice(chunks)]
            try:
                values.append(_ratio([s[i] for i in pick], [p[i] for i in pick], [k[i] for i in pick], period))
            except ValueError:  # a draw without any logging step of a periodic arm
                continue
        if not values:
            return r, r
        values.sort()
        return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]

    def typical(self, arm: str) -> float:
        """Median per-round ratio: an ordinary step of ``arm``."""
        return statistics.median(a / b for a, b in zip(self.steps[arm], self.paired[arm]))

    def slowest_ms(self, arm: str) -> float:
        return 1000 * max(self.steps[arm])

    def plain_ms(self) -> float:
        return 1000 * statistics.median(self.steps["plain"])

    # -- the agent arms, decomposed ----------------------------------------------------------------
    def sampled_extra_ms(self, arm: str) -> float | None:
        """What a sampled step adds (ms): the mean excess of the arm's sampled steps over the paired plain
        steps (for an arm that samples every step, of all its steps). A mean, not a median: a sampled step's
        cost is skewed to the right, and the mean is what it costs on average."""
        flags = self.sampled.get(arm)
        if not flags or not any(flags):
            return None
        return 1000 * statistics.fmean(a - b for a, b, f in zip(self.steps[arm], self.paired[arm], flags) if f)

    def decomposed(self, arm: str) -> float | None:
        """The agent arm's overhead from its parts, as a fraction of the plain step time:
        ``(timed cost of an unsampled step + sampled fraction * sampled_extra) / plain step``.

        Between samples the agent runs a few hooks, which it times itself; a sampled step's cost is
        measured in wall time, so the probe's untimed work inside the forward counts. Left out: the few
        steps after a sample run slightly slower (allocator and cache effects: +2.4% [0.8-4.2%] on each of
        the 3 steps after a sample of a 1M-parameter CNN, over 54 samples), and anything else an unsampled
        step pays that the agent's timers do not see. None for arms that sample every step.
        """
        flags = self.sampled.get(arm)
        extra = self.sampled_extra_ms(arm)
        if not flags or all(flags) or extra is None:
            return None
        timed = [t for t, f in zip(self.agent_seconds[arm], flags) if not f]
        per_step = statistics.fmean(timed) + sum(flags) / len(flags) * extra / 1000
        return per_step / statistics.fmean(self.paired[arm])

    def regular_us(self, arm: str) -> float | None:
        """The agent's own timed cost of an unsampled step (µs, median)."""
        flags = self.sampled.get(arm)
        if not flags or all(flags):
            return None
        return 1e6 * statistics.median(t for t, f in zip(self.agent_seconds[arm], flags) if not f)

    def sample_interval(self, arm: str) -> float | None:
        """Measured steps per sampled step."""
        flags = self.sampled.get(arm)
        return len(flags) / sum(flags) if flags and any(flags) else None


def _ratio(steps: list[float], paired: list[float], index: list[int], period: int | None) -> float:
    if period is None:
        return sum(steps) / sum(paired)
    logging = [k for k, i in enumerate(index) if i % period == 0]
    if not logging:
        raise ValueError("no logging step of a periodic arm in the measured window")
    regular = [k for k, i in enumerate(index) if i % period != 0]
    mean_plain = sum(paired) / len(paired)
    ordinary = sum(steps[k] for k in regular) / len(regular) if regular else 0.0
    spike = sum(steps[k] for k in logging) / len(logging)
    return ((period - 1) * ordinary + spike) / period / mean_plain


def _timed_step(arm: Arm) -> float:
    arm.clock.resume()
    t0 = time.perf_counter()
    arm.step()
    synchronize(arm.workload.device)  # an accelerator step ends when its queued kernels have run
    elapsed = time.perf_counter() - t0
    arm.clock.pause()
    return elapsed


def _warm(arm: Arm, steps: int) -> float:
    """Run ``steps`` untimed steps; returns the last one's time."""
    dt = 0.0
    for _ in range(steps):
        dt = _timed_step(arm)
    return dt


def run_overhead(
    workload: Workload,
    arms: tuple[str, ...] = ARMS,
    *,
    budget_s: float = 60.0,
    reps: int = 3,
    min_rounds: int = 30,
    max_rounds: int = 500,
    warmup: int = 3,
    agent_warmup_samples: int = 3,
    log: bool = True,
) -> OverheadResult:
    """Interleave ``arms`` (must include "plain") on ``workload`` for about ``budget_s`` seconds in all.

    ``reps`` repetitions each build every arm afresh. Before the measured rounds of a repetition every
    arm runs ``warmup`` steps, agent arms until ``agent_warmup_samples`` samples after attach (so the
    overhead budget has adapted the interval once), and a periodic arm, while none of its logging steps
    has been measured yet, far enough that one falls inside the rounds.
    """
    if "plain" not in arms:
        raise ValueError("the plain loop is the reference: include 'plain' in arms")
    if reps < 1 or min_rounds < 1:
        raise ValueError("reps and min_rounds must be >= 1")
    peers = Peers()
    result = OverheadResult(workload.name, workload.family, workload.size, params=0)
    result.load = (os.getloadavg()[0], 0.0)
    for name in arms:
        result.steps[name], result.paired[name], result.index[name], result.rep[name] = [], [], [], []
        if name in AGENT_OPTIONS:
            result.sampled[name], result.agent_seconds[name] = [], []
    shuffle = random.Random(0)
    rounds = 0
    shares: dict[str, list[float]] = {}
    try:
        for rep in range(reps):
            order = list(arms)
            shuffle.shuffle(order)  # allocation order changes where each model's memory lands
            built = {name: make_arm(name, workload, peers) for name in order}
            for arm in built.values():
                arm.clock.pause()
            result.params = sum(p.numel() for p in built["plain"].model.parameters())
            per_step = {name: _warm(arm, warmup) for name, arm in built.items()}
            if rep == 0:
                per_round = sum(t / EVERY.get(n, 1) for n, t in per_step.items())
                rounds = int(max(min_rounds, min(max_rounds, budget_s / reps / max(per_round, 1e-9))))
            for name, arm in built.items():
                if arm.monitor is not None:
                    while arm.monitor.sampled_steps < agent_warmup_samples:
                        _warm(arm, 1)
                period = PERIODIC.get(name)
                measured = rounds // EVERY.get(name, 1)
                if period and measured < period and not any(i % period == 0 for i in result.index[name]):
                    _warm(arm, max(0, period - measured // 2 - arm.k))  # a logging step mid-window
            marks = {n: (a.monitor.guard.seconds, a.monitor.steps.step_seconds_total)
                     for n, a in built.items() if a.monitor is not None}
            gc.collect()
            for r in range(rounds):
                if r % 25 == 0:
                    gc.collect()  # between rounds, never inside one: collector pauses hit no arm's step
                todo = [a for n, a in built.items() if r % EVERY.get(n, 1) == 0]
                shuffle.shuffle(todo)
                times: dict[str, float] = {}
                for a in todo:
                    m = a.monitor
                    if m is None:
                        times[a.name] = _timed_step(a)
                        continue
                    sampled, g0 = m._sampled, m.guard.seconds
                    times[a.name] = _timed_step(a)
                    result.sampled[a.name].append(sampled)
                    result.agent_seconds[a.name].append(m.guard.seconds - g0)
                for name, dt in times.items():
                    result.steps[name].append(dt)
                    result.paired[name].append(times["plain"])
                    result.index[name].append(built[name].k)
                    result.rep[name].append(rep)
            for name, (g0, s0) in marks.items():
                m = built[name].monitor
                if m.steps.step_seconds_total > s0:
                    shares.setdefault(name, []).append((m.guard.seconds - g0) / (m.steps.step_seconds_total - s0))
                result.interval[name] = m.schedule.interval
            for arm in built.values():
                release(arm, peers)
            del built
            gc.collect()
    finally:
        peers.close()
        gc.collect()
    result.agent_share = {name: statistics.mean(v) for name, v in shares.items()}
    result.reps, result.rounds = reps, rounds
    result.load = (result.load[0], os.getloadavg()[0])
    if log:
        parts = [f"{name} {result.ratio(name):.3f}" for name in arms if name != "plain"]
        est = result.decomposed("agent") if "agent" in arms else None
        extra = f"  (defaults decomposed {1 + est:.3f})" if est is not None else ""
        print(f"  {workload.name:16s} {result.params / 1e6:6.1f}M plain {result.plain_ms():8.1f} ms  "
              + "  ".join(parts) + extra + f"  ({reps}x{rounds} rounds)", flush=True)
    return result

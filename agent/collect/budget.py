"""Which steps are sampled: every ``sample_every`` steps, or as often as an overhead budget allows.

With ``overhead_budget`` (a fraction of step time, e.g. 0.01) the interval adapts: at each sample the
agent's time on the training thread and the step time of the interval just ended give its measured share;
the next interval is the one that would have met the budget, smoothed and bounded. The agent's time per
interval is ``n * per_step + per_sample``; choosing ``n = time / (budget * step)`` with the last interval's
time is a fixed-point iteration that settles at ``n = per_sample / (budget * step - per_step)``, the
smallest interval within budget, whenever the per-step hooks alone fit in the budget (otherwise the
interval climbs to ``max_interval``).
"""

from __future__ import annotations

import math
import statistics
from collections import deque


DECIDE_EVERY_STEPS = 100
"""The budget's sampling level changes only at multiples of this many steps: the steps a seeded run samples
(and so its findings) do not move with the machine's load between two decisions."""
MAX_INTERVAL_STEPS = 1000
"""The overhead budget never stretches the interval past this many steps (or ``sample_every`` when larger). The
first DECIDE_EVERY_STEPS steps always run at ``sample_every``: every check gets its first samples within them,
whatever the model's step time; later, a long interval only happens where steps are fast (milliseconds)."""


class OverheadController:
    """Adapts a sampling interval (steps) to keep the agent's share of step time near ``budget``.

    ``update()`` is fed, at each sampled step, the agent seconds and step seconds of the interval that
    just ended. Estimates are exponentially smoothed (``smoothing`` is the weight of the newest interval),
    one update changes the interval by at most ``max_factor`` either way, and the interval stays in
    ``[min_interval, max_interval]``.
    """

    def __init__(
        self,
        budget: float,
        initial: int,
        *,
        min_interval: int = 1,
        max_interval: int = 1000,
        smoothing: float = 0.5,
        max_factor: float = 2.0,
    ) -> None:
        if not (isinstance(budget, (int, float)) and 0 < budget < 1):
            raise ValueError(f"overhead budget must be a fraction of step time in (0, 1), e.g. 0.01; got {budget!r}")
        if not 1 <= min_interval <= max_interval:
            raise ValueError(f"need 1 <= min_interval <= max_interval, got {min_interval}, {max_interval}")
        if not 0 < smoothing <= 1 or max_factor <= 1:
            raise ValueError("smoothing must be in (0, 1] and max_factor > 1")
        self.budget = float(budget)
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.smoothing = smoothing
        self.max_factor = max_factor
        self.interval = min(max(int(initial), min_interval), max_interval)
        self.share: float | None = None
        """Agent share of step time over the last interval (0..1), None before the first."""
        self._agent: float | None = None  # smoothed agent seconds per interval
        self._step: float | None = None  # smoothed step seconds per step

    def update(self, agent_seconds: float, step_seconds: float, steps: int) -> int:
        """Feed the agent time and step time (seconds) of the last ``steps`` steps; returns the next interval."""
        if steps <= 0 or not step_seconds > 0 or not math.isfinite(step_seconds) or not math.isfinite(agent_seconds):
            return self.interval
        agent_seconds = max(0.0, agent_seconds)
        self.share = min(1.0, agent_seconds / step_seconds)
        a = self.smoothing
        per_step = step_seconds / steps
        self._agent = agent_seconds if self._agent is None else a * agent_seconds + (1 - a) * self._agent
        self._step = per_step if self._step is None else a * per_step + (1 - a) * self._step
        target = self._agent / (self.budget * self._step)
        low, high = self.interval / self.max_factor, self.interval * self.max_factor
        bounded = min(max(target, low), high)
        self.interval = int(min(max(math.ceil(bounded - 1e-9), self.min_interval), self.max_interval))
        return self.interval


class SampleSchedule:
    """Decides at each step boundary whether the next step is sampled.

    Fixed mode (no budget): every ``sample_every``-th global step, so a resumed run keeps its phase.
    Budget mode: a countdown whose length the OverheadController sets at each sample.
    """

    def __init__(self, sample_every: int, overhead_budget: float | None = None, **controller: int | float) -> None:
        self.sample_every = sample_every
        controller.setdefault("max_interval", max(sample_every, MAX_INTERVAL_STEPS))
        self.controller = OverheadController(overhead_budget, sample_every, **controller) if overhead_budget else None  # type: ignore[arg-type]
        self._mark: tuple[float, float, int] | None = None  # totals at the last sample
        self._level = sample_every

    @property
    def interval(self) -> int:
        """The current sampling interval in steps (the live value in budget mode)."""
        return self._level if self.controller is not None else self.sample_every

    @property
    def share(self) -> float | None:
        """The agent's measured share of step time over the last interval (budget mode), else None."""
        return self.controller.share if self.controller is not None else None

    def next_sampled(self, step_index: int, agent_seconds: float, step_seconds: float) -> bool:
        """Called once per step boundary with the new global step index and the running totals of agent
        seconds and step seconds; True when the step about to start is sampled.

        Budget mode samples the multiples of a level ``sample_every * 2**k`` (at most ``max_interval``): the
        sampled steps are the same in every run whatever small changes of speed move the controller, so a
        seeded run is checked on the same steps under load."""
        if self.controller is None:
            return step_index % self.sample_every == 0
        if step_index % self._level:
            return False
        if self._mark is not None:  # the first interval after attach also holds attach-time work: skip it
            a0, s0, n0 = self._mark
            if step_index > n0:
                self.controller.update(agent_seconds - a0, step_seconds - s0, step_index - n0)
        self._mark = (agent_seconds, step_seconds, step_index)
        if step_index % DECIDE_EVERY_STEPS == 0:  # the level changes only on a fixed grid of steps
            self._level = self._next_level(self.controller.interval)
        return step_index % self._level == 0

    def _next_level(self, interval: int) -> int:
        """The level for a wanted ``interval``: up to the largest level within it, down only once the wanted
        interval is below half the current level (timing noise near a boundary does not flip the level)."""
        level = self.sample_every
        while level * 2 <= min(interval, self.controller.max_interval):  # type: ignore[union-attr]
            level *= 2
        return level if level > self._level or interval < self._level / 2 else self._level


class ForwardCost:
    """What a sampled forward costs beyond what the agent's own timers see (seconds).

    The activation probe's ``TorchFunctionMode`` and module hooks run inside the model's forward, around
    every torch call, where no agent timer sits; its statistics (``observe``) are timed. This estimates
    the rest from the forwards themselves: a sampled forward's wall time, less the agent-timed work inside
    it, against the median of recent forwards that were not sampled. The estimate is the median of the
    last few such differences (robust to a forward slowed by something else), never negative, and zero
    until a few unsampled forwards have been seen.
    """

    def __init__(self, window: int = 32, recent: int = 5, min_plain: int = 3) -> None:
        self._plain: deque[float] = deque(maxlen=window)
        self._excess: deque[float] = deque(maxlen=recent)
        self._min_plain = min_plain
        self.estimate = 0.0
        """The current estimate of one sampled forward's untimed cost (seconds)."""

    def observe(self, seconds: float, sampled: bool) -> float:
        """Feed one training forward's wall time less agent-timed work inside it; returns the seconds to
        charge to the agent (non-zero only for sampled forwards)."""
        if not math.isfinite(seconds) or seconds < 0:
            return 0.0
        if not sampled:
            self._plain.append(seconds)
            return 0.0
        if len(self._plain) < self._min_plain:
            return 0.0
        self._excess.append(seconds - statistics.median(self._plain))
        self.estimate = max(0.0, statistics.median(self._excess))
        return self.estimate


__all__ = ["OverheadController", "SampleSchedule", "ForwardCost"]

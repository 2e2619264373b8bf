"""Step bookkeeping on every step, host values only: the step counter, step times, throughput, learning rates,
and where a rank's time goes (its own forward passes, waiting for input)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Iterable

from torch import Tensor


class StepClock:
    """Counters and timers the monitor advances at each step boundary (seconds from the monitor's clock)."""

    def __init__(self, now: float) -> None:
        self.step_index = 0
        """Global training step (continues across restarts from a checkpoint)."""
        self.steps_in_process = 0
        self.started = now
        self.last_step_seconds: float | None = None
        self.step_seconds_total = 0.0
        self.last_step_wall: float | None = None
        """Unix time at which the last step completed."""
        self.recent_step_seconds: deque[float] = deque(maxlen=64)
        self.samples_total = 0
        self.samples_this_step = 0
        self.samples_per_second: float | None = None
        self._at_sample = (0, 0)  # samples_total and steps completed at the previous sample
        self.learning_rates: tuple[float, ...] = ()
        self.first_forward_pending = True
        self.forwards = 0
        """Training forwards of the attached model seen so far (none: the training step calls something else)."""
        self.forward_seconds_total = 0.0
        """Seconds inside training forwards (root module), summed over steps: this rank's own work."""
        self.input_wait_seconds_total = 0.0
        """Seconds from each step boundary to the step's first training forward (data loading, transfers)."""

    def boundary(self, now: float, wall: float, optimizer: Any) -> None:
        """Close the step's timers at ``now``: its duration, throughput and the optimizer's learning rates."""
        dt = now - self.started
        self.started = now
        self.last_step_seconds = dt
        self.step_seconds_total += dt
        self.recent_step_seconds.append(dt)
        self.last_step_wall = wall
        if self.samples_this_step:
            self.samples_total += self.samples_this_step
            self.samples_per_second = self.samples_this_step / dt if dt > 0 else None
            self.samples_this_step = 0
        if optimizer is not None:
            self.learning_rates = learning_rates(optimizer, self.learning_rates)

    def samples_per_step_since_sample(self) -> float | None:
        """Mean samples (batch rows of training forwards) per step since the previous call, made once per
        sampled step after its boundary; None when no batch size was seen."""
        done = (self.samples_total, self.step_index + 1)
        samples, steps = done[0] - self._at_sample[0], done[1] - self._at_sample[1]
        self._at_sample = done
        return samples / steps if samples > 0 and steps > 0 else None

    def advance(self) -> None:
        """Count the step: the next one begins."""
        self.step_index += 1
        self.steps_in_process += 1
        self.first_forward_pending = True

    def median_step_seconds(self) -> float | None:
        return statistics.median(self.recent_step_seconds) if self.recent_step_seconds else None


def learning_rates(opt: Any, previous: tuple[float, ...]) -> tuple[float, ...]:
    """The learning rate of each param group; a device tensor LR keeps its last known value (no sync)."""
    out = []
    for k, g in enumerate(opt.param_groups):
        lr = g.get("lr")
        if isinstance(lr, Tensor):
            if lr.device.type != "cpu":  # reading a device tensor would sync: keep the last known value
                out.append(previous[k] if k < len(previous) else math.nan)
                continue
            lr = lr.item()
        out.append(float(lr) if lr is not None else math.nan)
    return tuple(out)


def batch_size(args: tuple, kwargs: dict) -> int:
    """The first dimension of the first tensor argument of a forward (0 when none)."""
    for v in _iter_values(args, kwargs):
        if isinstance(v, Tensor) and v.ndim >= 1:
            return int(v.shape[0])
    return 0


def _iter_values(args: tuple, kwargs: dict) -> Iterable[Any]:
    yield from args
    yield from kwargs.values()


__all__ = ["StepClock", "learning_rates", "batch_size"]

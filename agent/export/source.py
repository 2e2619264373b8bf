"""What the export layer reads from a monitor: a small protocol, so that export never imports the Monitor."""

from __future__ import annotations

from typing import Any, Protocol

from ..config import Options
from ..guard import Guard
from ..snapshot import Snapshot


class MetricsSource(Protocol):
    """Host-side state of one watched model (``agent.monitor.Monitor`` is one). Read at scrape time; every
    attribute is a host value, never a device tensor."""

    options: Options
    guard: Guard
    steps: Any  # agent.collect.steps.StepClock: counters, step times, learning rates
    logged: Any  # agent.collect.logged.LoggedValues: logged_values by name
    schedule: Any  # agent.collect.budget.SampleSchedule: the live sample interval
    probe: Any  # agent.collect.probes.ActivationProbe: dropped activation sites
    memory_reader: Any  # agent.collect.memory.MemoryReader: NVML readings
    engine: Any  # agent.checks.engine.CheckEngine or None: findings raised by check
    amp: Any  # agent.collect.amp.ScalerWatch or None
    sampled_steps: int
    overhead_ratio: float | None
    eval_in_train_forwards: int
    constant_weights: tuple[str, ...]
    fingerprint: tuple[int, float] | None
    sharded: bool
    per_module: bool

    @property
    def step_index(self) -> int: ...

    def delivery_counts(self) -> dict[str, tuple[int, int, int]]: ...

    @property
    def snapshot(self) -> Snapshot | None: ...

    @property
    def findings(self) -> list[Any]: ...


__all__ = ["MetricsSource"]

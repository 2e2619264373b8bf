"""TensorBoard event files with the history's scalars, for people whose habit is TensorBoard.

``attach(..., tensorboard_dir="runs/exp1")`` (or ``NNWATCH_TENSORBOARD_DIR``) writes through
``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package) on the sink's own thread: the
training thread only queues the snapshot. Tags, each at the sampled step:

- ``loss/train``, ``loss/val``, ``lr/group<N>``
- ``grad_norm/global``, ``grad_norm/<layer>``, ``update_ratio/global``, ``update_ratio/<layer>``
- ``dead_fraction/<activation>``, ``saturated_fraction/<activation>``
- ``memory/host_rss_bytes``, ``memory/cuda_allocated_bytes``
- findings as text under ``findings``

Per-layer tags follow the ``max_modules`` cap, spread over the model's depth.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from ..guard import Guard
from ..snapshot import Snapshot
from .collector import spread_select
from .sink import SnapshotSink


def scalars(s: Snapshot, max_modules: int = 200) -> Iterator[tuple[str, float]]:
    """(tag, value) of every scalar of a snapshot that has a value."""
    def given(tag: str, value: float | None) -> Iterator[tuple[str, float]]:
        if value is not None:
            yield tag, float(value)

    yield from given("loss/train", s.loss)
    yield from given("loss/val", s.val_loss)
    for k, lr in enumerate(s.learning_rates):
        yield f"lr/group{k}", float(lr)
    yield from given("grad_norm/global", s.grad_norm)
    yield from given("update_ratio/global", s.update_ratio)
    layers = set(spread_select([l.module for l in s.layers], max_modules, set()))
    for l in s.layers:
        if l.module in layers:
            yield from given(f"grad_norm/{l.module}", l.grad_norm)
            yield from given(f"update_ratio/{l.module}", l.update_ratio)
    acts = set(spread_select([a.key for a in s.activations], max_modules, set()))
    for a in s.activations:
        if a.key in acts:
            yield from given(f"dead_fraction/{a.key}", a.dead_ratio)
            yield from given(f"saturated_fraction/{a.key}", a.saturated_ratio)
    yield from given("memory/host_rss_bytes", s.memory.host_rss)
    if s.memory.cuda_allocated:
        yield "memory/cuda_allocated_bytes", float(sum(s.memory.cuda_allocated.values()))


class TensorBoardWriter(SnapshotSink):
    """Writes snapshots and findings to TensorBoard event files in ``log_dir`` on its own thread."""

    probe = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike[str], guard: Guard | None = None, *, max_modules: int = 200,
                 max_queue: int = 1024) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs `pip install tensorboard` (checked at attach)

        self.log_dir = os.fspath(log_dir)
        self.max_modules = max_modules
        self._writer = SummaryWriter(log_dir=self.log_dir)
        super().__init__(guard, max_queue=max_queue)

    def record(self, snap: Snapshot) -> None:
        """Queue a sampled step (training thread; never blocks)."""
        self.put(snap)

    def finding(self, status: str, f: Any, step: int, also: Sequence[str] = ()) -> None:
        """Queue a finding (an agent.checks Finding) that fired or resolved at ``step``."""
        where = f" in {f.module}" if f.module else ""
        more = f" (also {', '.join(also)})" if also else ""
        self.put((step, f"[{status}] {f.severity} {f.check}{where}{more}: {f.message}"))

    def write(self, batch: list[Any]) -> None:
        for rec in batch:
            if isinstance(rec, Snapshot):
                for tag, value in scalars(rec, self.max_modules):
                    self._writer.add_scalar(tag, value, rec.step, walltime=rec.time)
            else:
                step, text = rec
                self._writer.add_text("findings", text, step)
        self._writer.flush()

    def finish(self) -> None:
        self._writer.close()


__all__ = ["TensorBoardWriter", "scalars"]

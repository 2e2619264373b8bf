"""The arms of a comparison: a plain training loop and the same loop watched by the agent or a peer.

Every arm owns its own copy of the model (same seed, same data), so arms never share hooks and can be
interleaved block by block in one process. Each arm does exactly one training step per ``step()``.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable

import torch
from torch import nn

from .models import Workload

ARMS = ("plain", "control", "agent", "agent_all", "wandb_1", "wandb_100", "naive")
"""Arm names, in the order they appear in tables."""

LABELS = {
    "plain": "plain loop",
    "control": "plain loop again (A/A control)",
    "agent": "nnwatch defaults",  # sample_every=10 with the default overhead_budget=0.01 (stretches only)
    "agent_all": "nnwatch, everything every step",
    "wandb_1": 'wandb.watch(log="all", log_freq=1)',
    "wandb_100": 'wandb.watch(log="all", log_freq=100)',
    "naive": "naive .norm().item() per parameter",
}


class PausableClock:
    """perf_counter minus the time spent paused: the agent's step timer sees only its own arm's steps."""

    def __init__(self) -> None:
        self._paused_total = 0.0
        self._paused_at: float | None = None

    def __call__(self) -> float:
        now = time.perf_counter()
        at = self._paused_at if self._paused_at is not None else now
        return at - self._paused_total

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.perf_counter() - self._paused_at
            self._paused_at = None


class Arm:
    """A model, its optimizer and whatever watches it; ``step()`` runs one training step."""

    def __init__(self, name: str, workload: Workload) -> None:
        self.name = name
        self.workload = workload
        torch.manual_seed(0)
        self.model: nn.Module = workload.build().to(workload.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.data = [(x.to(workload.device), y.to(workload.device)) for x, y in workload.batches()]
        self.k = 0
        self.monitor: Any = None
        self.after_backward: Callable[[], None] | None = None
        self.norms: dict[str, float] = {}
        self.clock = PausableClock()

    def step(self) -> None:
        x, y = self.data[self.k % len(self.data)]
        self.k += 1
        self.opt.zero_grad(set_to_none=True)
        loss = self.workload.loss(self.model(x), y)
        loss.backward()
        if self.after_backward is not None:
            self.after_backward()
        self.opt.step()
        if self.monitor is not None:
            self.monitor.log(loss=loss)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None


class Peers:
    """One offline wandb run shared by the wandb arms of a process (created on first use)."""

    def __init__(self) -> None:
        self.run: Any = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._watched = 0

    def wandb_run(self) -> Any:
        if self.run is None:
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ.setdefault("WANDB_CONSOLE", "off")
            import wandb

            self._dir = tempfile.TemporaryDirectory(prefix="nnwatch-bench-wandb-")
            self.run = wandb.init(project="nnwatch-bench", dir=self._dir.name, mode="offline", settings=wandb.Settings(
                silent=True, console="off", x_disable_stats=True, x_disable_meta=True))
        return self.run

    def watch(self, model: nn.Module, log_freq: int) -> None:
        run = self.wandb_run()
        run.watch(model, log="all", log_freq=log_freq, idx=self._watched)
        self._watched += 1

    def unwatch(self, model: nn.Module) -> None:
        if self.run is not None:
            self.run.unwatch(model)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def have_wandb() -> bool:
    """True when the optional peer (``pip install -r benchmarks/requirements.txt``) is importable."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


AGENT_OPTIONS: dict[str, dict[str, Any]] = {
    "agent": {},
    "agent_all": {"sample_every": 1},
}
"""Options of each agent arm on top of ``port=None`` (everything else: the defaults)."""


def _attach(arm: Arm, **options: Any) -> Any:
    # What agent.attach(model, opt, port=None, **options) builds, with the arm's pausable clock, so that
    # time spent running the other arms between blocks does not count as this arm's step time.
    from agent.config import Options
    from agent.monitor import Monitor

    return Monitor(arm.model, arm.opt, Options.resolve(port=None, **options), clock=arm.clock, serve=False)


def make_arm(name: str, workload: Workload, peers: Peers) -> Arm:
    """Build arm ``name`` (see ARMS) on a fresh copy of the workload's model."""
    arm = Arm(name, workload)
    if name in AGENT_OPTIONS:
        arm.monitor = _attach(arm, **AGENT_OPTIONS[name])
    elif name in ("wandb_1", "wandb_100"):
        peers.watch(arm.model, 1 if name == "wandb_1" else 100)
    elif name == "naive":
        named = list(arm.model.named_parameters())

        def naive_norms() -> None:
            # What a hand-written gradient logger does: one norm and one host read per tensor, every step.
            for n, p in named:
                if p.grad is not None:
                    arm.norms["grad/" + n] = p.grad.norm().item()
                arm.norms["weight/" + n] = p.detach().norm().item()

        arm.after_backward = naive_norms
    elif name not in ("plain", "control"):  # the control arm is a second, identical plain loop
        raise ValueError(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")
    return arm


def release(arm: Arm, peers: Peers) -> None:
    """Detach whatever watches the arm and drop its model."""
    arm.close()
    if arm.name.startswith("wandb"):
        peers.unwatch(arm.model)


__all__ = ["ARMS", "LABELS", "AGENT_OPTIONS", "Arm", "Peers", "make_arm", "release", "have_wandb"]

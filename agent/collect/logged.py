"""Values the training script logs (loss, validation loss, other scalars): kept as device tensors until the
next sampled step, so that ``monitor.log()`` never forces a host sync."""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch
from torch import Tensor

from . import stats
from .steps import StepClock
from .transfer import DeviceBatch

_MAX_PENDING = 4096


class LoggedValues:
    """Pending logged values between sampled steps, and what the host has read of them."""

    def __init__(self) -> None:
        self.pending_losses: list[Tensor | float] = []
        self._first_loss: Tensor | float | None = None
        self.first_loss: float | None = None
        """The first training loss logged (host float once a sample has read it)."""
        self.pending_val: list[tuple[int, Tensor | float]] = []
        self.val_history: list[tuple[int, float]] = []
        """(step, validation loss) pairs, oldest first (the last 1,000)."""
        self.pending_scalars: dict[str, Tensor | float] = {}
        self.logged_values: dict[str, float] = {}
        """Other scalars passed to log(), by name, as of the last sampled step."""

    def log(self, steps: StepClock, loss: Any, val_loss: Any, scalars: dict[str, Any]) -> None:
        """``Monitor.log()``: validate and keep the values; ``lr`` and ``batch_size`` go to the step clock."""
        if loss is not None:
            self.loss(loss)
        if val_loss is not None:
            self.val_loss(val_loss, steps.step_index)
        for name, raw in scalars.items():
            if not name.isidentifier():
                raise ValueError(f"log() scalar names must be identifiers, got {name!r}")
            value = scalar(raw, name)
            if name in ("lr", "learning_rate"):
                if isinstance(value, Tensor):
                    raise TypeError("pass the learning rate as a float (e.g. scheduler.get_last_lr()[0])")
                steps.learning_rates = (float(value),)
            elif name == "batch_size":
                if isinstance(value, Tensor) or value < 0 or value != int(value):
                    raise TypeError("batch_size must be a non-negative int")
                steps.samples_this_step += int(value)
            else:
                self.pending_scalars[name] = value

    def loss(self, value: Any) -> None:
        """Record a training loss (tensor or number)."""
        v = scalar(value, "loss")
        if self._first_loss is None:
            self._first_loss = v
        if len(self.pending_losses) >= _MAX_PENDING:  # never grows without bound when steps are not seen
            del self.pending_losses[: len(self.pending_losses) // 2]
        self.pending_losses.append(v)

    def val_loss(self, value: Any, step: int) -> None:
        """Record a validation loss measured at ``step``."""
        self.pending_val.append((step, scalar(value, "val_loss")))

    def restore_first_loss(self, value: float) -> None:
        """A resumed run: its first loss is the original run's, not the first one logged after the restart."""
        self.first_loss = value
        self._first_loss = value

    def queue(self, batch: DeviceBatch) -> None:
        """Queue the pending values for the sampled step's one batched copy."""
        if self.pending_losses:
            losses = _stack_scalars(self.pending_losses)
            batch.add("loss", losses.mean())
            batch.add("loss_nonfinite", stats.nonfinite_count(losses))
        if self._first_loss is not None and self.first_loss is None:
            batch.add("first_loss", self._first_loss)
        for k, (_, v) in enumerate(self.pending_val):
            batch.add(("val", k), v if isinstance(v, Tensor) else float(v))
        for name, v in self.pending_scalars.items():
            batch.add(("scalar", name), v if isinstance(v, Tensor) else float(v))

    def read(self, host: dict) -> tuple[float | None, int]:
        """Take the fetched values; returns (mean loss since the last sample or None, its non-finite count)."""
        if "first_loss" in host:
            self.first_loss = host["first_loss"]
        for k, (step, _) in enumerate(self.pending_val):
            self.val_history.append((step, host[("val", k)]))
        del self.val_history[:-1000]
        for name in self.pending_scalars:
            self.logged_values[name] = host[("scalar", name)]
        self.clear_pending()
        return host.get("loss"), int(host.get("loss_nonfinite", 0))

    @property
    def val_loss_last(self) -> float | None:
        return self.val_history[-1][1] if self.val_history else None

    def clear_pending(self) -> None:
        self.pending_losses = []
        self.pending_val = []
        self.pending_scalars = {}


def scalar(value: Any, name: str) -> Tensor | float:
    """Validate a logged scalar: a one-element floating tensor (kept on its device) or a real number."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar; got a tensor of shape {tuple(value.shape)} (reduce it, e.g. {name}.mean())")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a floating-point tensor or a number, got dtype {value.dtype}")
        return value.detach().reshape(())
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")
    return float(value)


def _stack_scalars(values: list[Tensor | float]) -> Tensor:
    tensors = [v for v in values if isinstance(v, Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    return torch.stack([
        v.to(device=device, dtype=torch.float32) if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float32, device=device)
        for v in values
    ])


__all__ = ["LoggedValues", "scalar"]

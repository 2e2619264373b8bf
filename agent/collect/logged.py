"""Values the training script logs (loss, validation loss, other scalars): kept as device tensors until the
next sampled step, so that ``monitor.log()`` never forces a host sync."""

from __future__ import annotations

import ctypes
import math
import struct
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from . import stats
from .steps import StepClock
from .transfer import DeviceBatch

_MAX_PENDING = 4096
_HOST_FORMATS = {torch.float32: "f", torch.float64: "d"}


class NonfiniteTripwire:
    """Notices a non-finite training loss on the step it is logged, without a host-device sync.

    A CPU loss is read directly (host memory: no device to wait for). A device loss gets a flag that is copied
    to pinned host memory asynchronously; a later step boundary reads it once its CUDA event has completed,
    so a NaN is seen one or two steps late instead of at the next scheduled sample.
    """

    def __init__(self) -> None:
        self._tripped = False
        self.first_step: int | None = None
        """The training step of the first non-finite loss seen since the last reset."""
        self._flag_step = self._copy_step = 0
        self._forced = -(10**9)  # the last step sampled early
        self._flag: Tensor | None = None  # device flag of the losses since the last poll: any non-finite
        self._host: Tensor | None = None
        self._event: Any = None

    def observe(self, loss: Tensor | float, step: int) -> None:
        if self._tripped:
            return
        if self._flag is None:
            self._flag_step = step  # the first step the pending device flag covers
        if not isinstance(loss, Tensor):
            self._tripped = not math.isfinite(loss)
        elif loss.device.type == "cpu" and loss.dtype in _HOST_FORMATS:
            # A CPU scalar is final in host memory: read its bytes (no device, nothing to wait for).
            raw = ctypes.string_at(loss.data_ptr(), loss.element_size())
            self._tripped = not math.isfinite(struct.unpack(_HOST_FORMATS[loss.dtype], raw)[0])
        elif loss.device.type == "cpu":
            return  # other CPU dtypes: the next scheduled sample sees it
        else:
            bad = ~torch.isfinite(loss.detach())
            self._flag = bad if self._flag is None else self._flag | bad
        if self._tripped:
            self.first_step = step

    def tripped(self) -> bool:
        """Whether a non-finite loss was seen since the last reset (device flags: once their copy landed)."""
        if self._tripped or self._flag is None:
            return self._tripped
        if self._event is None:  # start an asynchronous copy of the flag
            if self._host is None:
                self._host = torch.zeros((), dtype=torch.bool, pin_memory=torch.cuda.is_available())
            self._host.copy_(self._flag, non_blocking=True)
            self._copy_step = self._flag_step
            self._event = torch.cuda.Event() if self._flag.device.type == "cuda" else None
            if self._event is None:  # another device type: read at the next sample instead
                self._flag = None
                return False
            self._event.record()
            self._flag = None
            return False
        if self._event.query():  # the copy has landed: reading host memory waits on nothing
            self._tripped = bool(self._host)
            self._event = None
            if self._tripped:
                self.first_step = self._copy_step  # the flag covers losses from this step on
        return self._tripped

    def due(self, step: int, every: int) -> bool:
        """Whether ``step`` should be sampled early for a non-finite loss: at most once per ``every`` steps, so
        that a run that stays NaN is not sampled at every step."""
        if not self.tripped() or step < self._forced + every:
            return False
        self._forced = step
        return True

    def reset(self) -> None:
        self._tripped = False
        self.first_step = None
        self._flag = None
        self._event = None


class LoggedValues:
    """Pending logged values between sampled steps, and what the host has read of them."""

    def __init__(self) -> None:
        self.tripwire = NonfiniteTripwire()
        """Sees a non-finite loss between samples (the monitor then samples the next step)."""
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
            # A loss logged before the step's first forward belongs to the step that just ended.
            self.loss(loss, max(0, steps.step_index - 1) if steps.first_forward_pending else steps.step_index)
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

    def loss(self, value: Any, step: int = 0) -> None:
        """Record a training loss (tensor or number) of training step ``step``."""
        v = scalar(value, "loss")
        if self._first_loss is None:
            self._first_loss = v
        if len(self.pending_losses) >= _MAX_PENDING:  # never grows without bound when steps are not seen
            del self.pending_losses[: len(self.pending_losses) // 2]
        self.pending_losses.append(v)
        self.tripwire.observe(v, step)

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
            batch.add("loss_min", losses.amin())
            batch.add("loss_nonfinite", stats.nonfinite_count(losses))
        if self._first_loss is not None and self.first_loss is None:
            batch.add("first_loss", self._first_loss)
        for k, (_, v) in enumerate(self.pending_val):
            batch.add(("val", k), v if isinstance(v, Tensor) else float(v))
        for name, v in self.pending_scalars.items():
            batch.add(("scalar", name), v if isinstance(v, Tensor) else float(v))

    def read(self, host: dict) -> tuple[float | None, int]:
        """Take the fetched values; returns (mean loss since the last sample or None, its non-finite count).
        The smallest loss since the last sample is ``host.get("loss_min")``."""
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
        self.tripwire.reset()
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

"""Mixed precision: follow a ``torch.amp.GradScaler`` so that the steps it skips are known.

A GradScaler skips ``optimizer.step()`` when the unscaled gradients hold inf/NaN, so the optimizer hooks
never fire on such a step. ``ScalerWatch`` wraps the scaler's ``step`` (an instance attribute, removed
again by ``close()``) and notices a skip by the absence of the optimizer's step: no device value is read.
Occasional skips are how dynamic loss scaling works; many in a row mean the scale is collapsing and the
run is broken, which the nonfinite_values check reports (threshold ``nonfinite_values.amp_skipped_steps``).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

from torch import Tensor

from ..guard import Guard
from .transfer import DeviceBatch
from .weakhook import WeakHook

log = logging.getLogger("nnwatch")


class ScalerWatch:
    """Counts steps skipped by one GradScaler and reads its scale on sampled steps."""

    def __init__(self, scaler: Any, guard: Guard, step_index: Callable[[], int], on_skip: Callable[[Any], None],
                 *, pending_state: dict[str, Any] | None = None) -> None:
        """``step_index()`` reads the current step; ``on_skip(optimizer)`` ends the step the scaler skipped;
        ``pending_state`` is a ``state_dict()`` restored before the watch began."""
        if not callable(getattr(scaler, "step", None)) or not hasattr(scaler, "update"):
            raise TypeError(f"watch_scaler() needs a torch.amp.GradScaler, got {type(scaler).__name__}")
        self._guard = guard
        self._step_index = step_index
        self._on_skip = on_skip
        self._scaler = weakref.ref(scaler)
        self._original = scaler.step
        self._stepped = False
        self._hooked: dict[int, Any] = {}
        self.skipped_total = 0
        """Optimizer steps the scaler skipped since the watch began."""
        self.consecutive_skips = 0
        """Skipped steps since the last step that was applied (0 when the last step was applied)."""
        self.last_skipped_step: int | None = None
        self._last_sample_step: int | None = None
        self.scale: float | None = None
        """Loss scale read on the last sampled step."""
        scaler.step = self._step
        if pending_state:
            self.load_state_dict(pending_state)

    def _mark(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._stepped = True
        return None

    def _step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        if id(optimizer) not in self._hooked:
            self._guard.call("amp", self._hook, optimizer)
        self._stepped = False
        result = self._original(optimizer, *args, **kwargs)
        if id(optimizer) in self._hooked:
            self._guard.call("amp", self._after, optimizer)
        return result

    def _hook(self, optimizer: Any) -> None:
        self._hooked[id(optimizer)] = optimizer.register_step_post_hook(WeakHook(self, "_mark"))

    def _after(self, optimizer: Any) -> None:
        if self._stepped:
            self.consecutive_skips = 0
            return
        self.skipped_total += 1
        self.consecutive_skips += 1
        self.last_skipped_step = self._step_index()
        self._on_skip(optimizer)

    def queue(self, batch: DeviceBatch) -> None:
        """Queue the current scale for the sampled step's one batched copy."""
        scaler = self._scaler()
        scale = getattr(scaler, "_scale", None) if scaler is not None else None
        if isinstance(scale, Tensor):
            batch.add("amp_scale", scale)

    def read(self, host: dict, step: int) -> bool:
        """Take the fetched scale; returns whether the sample at ``step`` may hold a skipped step's inf/NaN.

        That is any skip from the previous sampled step on: a loss logged after ``scaler.step()`` of a
        skipped step lands in the next sample.
        """
        if "amp_scale" in host:
            self.scale = float(host["amp_scale"])  # type: ignore[arg-type]
        since = self._last_sample_step if self._last_sample_step is not None else -1
        self._last_sample_step = step
        return self.last_skipped_step is not None and self.last_skipped_step >= since

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_total": self.skipped_total, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_total = int(state.get("skipped_total", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))

    def close(self) -> None:
        """Give the scaler its own ``step`` back and remove the optimizer hooks."""
        for handle in self._hooked.values():
            handle.remove()
        self._hooked = {}
        scaler = self._scaler()
        if scaler is not None and scaler.__dict__.get("step") == self._step:
            del scaler.__dict__["step"]


__all__ = ["ScalerWatch"]

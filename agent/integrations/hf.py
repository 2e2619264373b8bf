"""Hugging Face transformers: ``Trainer(..., callbacks=[NNWatchHFCallback()])`` watches the model trained.

A thin adapter over :func:`agent.attach`: the training loss is the model output's ``loss`` of each
training forward (a device tensor, no sync; falls back to the Trainer's logged ``loss`` for models that do
not return one), the evaluation loss is ``eval_loss``, learning rates and step boundaries come from the
optimizer's hooks (accelerate's wrapper is looked through), fp16 GradScalers are watched, and the
monitor's state travels in the Trainer's checkpoints (``ExportableState``), so a resumed run goes on.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..config import Options
from ..monitor import Monitor


class NNWatchHFCallback(TrainerCallback, ExportableState):
    """Attaches an nnwatch Monitor at ``on_train_begin`` and closes it at ``on_train_end``.

    Keyword arguments are :func:`agent.attach` options (``port``, ``num_classes``, ``sample_every``...).
    On resume the Trainer rebuilds this callback from its saved state; read the monitor from
    ``trainer.callback_handler.callbacks`` rather than from an old reference.
    """

    def __init__(self, **options: Any) -> None:
        Options.resolve(**options)  # fail fast on a bad option
        self.options = options
        self.monitor: Monitor | None = None
        self.monitor_state: dict[str, Any] | None = None
        self._hook: Any = None
        self._forward_losses = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        """Fires after the model and optimizer are prepared and a checkpoint was loaded: attach here."""
        import agent

        if model is None:
            return
        if self.monitor is not None:
            self.monitor.close()
        self.monitor = agent.attach(model, _inner_optimizer(optimizer), **self.options)
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer with fp16
        if scaler is not None and getattr(scaler, "is_enabled", lambda: False)():
            self.monitor.watch_scaler(scaler)
        saved = self.monitor_state or _saved_state(state, type(self).__name__)
        if saved:
            self.monitor.load_state_dict(saved)
        elif state.global_step:
            self.monitor.step_index = int(state.global_step)
        self._hook = model.register_forward_hook(self._on_output)

    def _on_output(self, module: Any, args: Any, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()) or self.monitor is None:
            return None
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._forward_losses = True
            self.monitor.log(loss=loss)
        return None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        """Fires when the Trainer logs: its averaged ``loss`` only when the model returns no loss itself."""
        if self.monitor is not None and logs and not self._forward_losses and isinstance(logs.get("loss"), (int, float)):
            self.monitor.log(loss=float(logs["loss"]))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        """Fires after each evaluation: ``eval_loss`` is the validation loss (overfitting check)."""
        if self.monitor is not None and metrics and isinstance(metrics.get("eval_loss"), (int, float)):
            self.monitor.log(val_loss=float(metrics["eval_loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Fires when training ends: remove every hook, push/serve the final state."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor_state = self.monitor.state_dict()
            self.monitor.close()

    def state(self) -> dict[str, Any]:
        """Saved in the Trainer's checkpoints (trainer_state.json): options and the monitor's state."""
        current = self.monitor.state_dict() if self.monitor is not None else self.monitor_state
        return {"args": dict(self.options), "attributes": {"monitor_state": current}}


def _saved_state(state: Any, name: str) -> dict[str, Any] | None:
    """The monitor state in a resumed checkpoint's trainer_state.json (present even when the Trainer does
    not rebuild callbacks, i.e. without ``restore_callback_states_from_checkpoint``)."""
    entry = (getattr(state, "stateful_callbacks", None) or {}).get(name)
    if isinstance(entry, list):
        entry = entry[0] if entry else None
    return (entry or {}).get("attributes", {}).get("monitor_state") if isinstance(entry, dict) else None


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer itself: accelerate wraps it (AcceleratedOptimizer.optimizer)."""
    seen = 0
    while optimizer is not None and hasattr(optimizer, "optimizer") and seen < 4:
        optimizer = optimizer.optimizer
        seen += 1
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


__all__ = ["NNWatchHFCallback"]

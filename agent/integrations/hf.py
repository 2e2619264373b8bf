"""Hugging Face transformers: ``Trainer(..., callbacks=[NNWatchHFCallback()])`` watches the model trained.

A thin adapter over :func:`agent.attach`: the training loss is the model output's ``loss`` of each
training forward (a device tensor, no sync; falls back to the Trainer's logged ``loss`` for models that do
not return one), the evaluation loss is ``eval_loss``, learning rates and step boundaries come from the
optimizer's hooks (accelerate's wrapper is looked through), fp16 GradScalers are watched, and the
monitor's state travels in the Trainer's checkpoints (``ExportableState``), so a resumed run goes on.

:func:`preflight` runs :func:`agent.preflight` on a transformers model and one collated batch with ``labels``
(the model's own loss); ``NNWatchHFCallback(preflight=True)`` does so on the first training batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..config import Options
from ..monitor import Monitor
from ..preflight import PreflightReport
from ..preflight import preflight as _preflight
from ..preflight.batch import tree_map
from ..collect.weakhook import WeakHook
from ..preflight.option import announce, first_batch, preflight_option

TOKEN_INPUTS = ("input_ids",)
"""Inputs that become the pad token in the input-independent baseline."""
FEATURE_INPUTS = ("inputs_embeds", "pixel_values", "input_features", "input_values")
"""Inputs that become zeros; the rest (attention masks, token type ids, labels) are kept."""


def preflight(model: nn.Module, batch: Mapping[str, Any], *, loss_fn: Callable[[Any, Any], Tensor] | None = None,
              **options: Any) -> PreflightReport:
    """:func:`agent.preflight` for a transformers model and one collated batch (``input_ids``, masks, ``labels``).

    The model is called as ``model(**batch)`` and its own ``loss`` is the loss (``loss_fn(logits, labels)``
    replaces it); ``num_classes`` is inferred from the logits and labels (classes or vocabulary); in the
    input-independent baseline ``input_ids`` become the pad token (``config.pad_token_id``, else 0) and
    embeddings/pixel values zeros, while masks and labels are kept. Other keywords go to agent.preflight.
    """
    inputs = dict(batch)
    if "labels" not in inputs and loss_fn is None:
        raise ValueError("the batch has no labels: the model computes its loss from them (or pass loss_fn=)")
    pad = options.pop("pad_token", None)
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    options.setdefault("zero_fn", lambda x: _zero_inputs(x, pad))
    options.setdefault("output_fn", _logits)
    return _preflight(_KeywordCall(model), (inputs, inputs.get("labels")), loss_fn or _own_loss, **options)


class _KeywordCall(nn.Module):
    """``model(**inputs)`` as a module of one argument, as preflight calls it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Any]) -> Any:
        return self.model(**inputs)


def _logits(output: Any) -> Any:
    return output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", output)


def _own_loss(output: Any, labels: Any) -> Tensor:
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss for this batch: include labels, or pass loss_fn=")
    return loss


def _zero_inputs(inputs: dict[str, Any], pad: int) -> dict[str, Any]:
    out = dict(inputs)
    for key in TOKEN_INPUTS:
        if isinstance(out.get(key), Tensor):
            out[key] = torch.full_like(out[key], pad)
    for key in FEATURE_INPUTS:
        if isinstance(out.get(key), Tensor):
            out[key] = torch.zeros_like(out[key])
    return out


class NNWatchHFCallback(TrainerCallback, ExportableState):
    """Attaches an nnwatch Monitor at ``on_train_begin`` and closes it at ``on_train_end``.

    ``preflight``: True (or a dict of :func:`preflight` keywords, plus ``strict=True`` to stop before training
    when a check fails): run :func:`preflight` on the first training batch when training begins; the report
    is logged and kept in ``preflight_report``.
    Other keyword arguments are :func:`agent.attach` options (``port``, ``num_classes``, ``sample_every``...).
    On resume the Trainer rebuilds this callback from its saved state; read the monitor from
    ``trainer.callback_handler.callbacks`` rather than from an old reference.
    """

    def __init__(self, *, preflight: Any = None, **options: Any) -> None:
        resolved = Options.resolve(**options)  # fail fast on a bad option
        self._console, self._num_classes = resolved.console_log, resolved.num_classes
        self._preflight = preflight_option(preflight, loss_fn_required=False)
        self.preflight_report: PreflightReport | None = None
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
        loader = kwargs.get("train_dataloader")
        if self._preflight is not None and self.preflight_report is None and not state.global_step and loader:
            self._run_preflight(model, loader)
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
        self._hook = model.register_forward_hook(WeakHook(self, "_on_output"))  # copies of the model stay picklable

    def _run_preflight(self, model: nn.Module, loader: Any) -> None:
        keywords, strict = dict(self._preflight[0]), self._preflight[1]
        keywords.setdefault("num_classes", self._num_classes)
        # accelerate's DataLoaderShard tracks its iterations: read one batch from the plain loader inside it.
        batch = first_batch(getattr(loader, "base_dataloader", loader))
        device = next(model.parameters()).device
        batch = tree_map(lambda t: t.to(device), batch)
        self.preflight_report = preflight(model, batch, **keywords)
        announce(self.preflight_report, strict, self._console)

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


__all__ = ["NNWatchHFCallback", "preflight"]

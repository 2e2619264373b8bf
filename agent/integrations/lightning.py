"""PyTorch Lightning: ``Trainer(callbacks=[NNWatchCallback()])`` watches the LightningModule being fitted.

A thin adapter over :func:`agent.attach`: the training loss comes from ``training_step``'s output, the
validation loss from the logged metric ``val_loss_key``, learning rates and step boundaries from the
optimizer's own hooks, a ``16-mixed`` GradScaler is watched, and the monitor's state is saved in and
restored from Lightning checkpoints. Works with ``lightning`` (``lightning.pytorch``) and the older
``pytorch_lightning`` package.

``NNWatchCallback(preflight=F.cross_entropy)`` first runs :func:`agent.preflight` on the module and the first
training batch ``(inputs, targets)`` when training starts, and logs its report.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Options
from ..monitor import Monitor
from ..preflight import PreflightReport, preflight
from ..preflight.option import announce, first_batch, preflight_option

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package of older releases
    from pytorch_lightning import Callback  # type: ignore[no-redef]


class NNWatchCallback(Callback):
    """Attaches an nnwatch Monitor when training starts and closes it when training ends.

    ``val_loss_key``: the name your ``validation_step`` logs its loss under (``self.log("val_loss", ...)``).
    ``preflight``: a loss function ``loss_fn(module(inputs), targets)`` (or a dict of :func:`agent.preflight`
    keywords with ``loss_fn``, plus ``strict=True`` to stop before training when a check fails): run
    preflight on the first training batch ``(inputs, targets)`` when training starts; the report is logged
    and kept in ``preflight_report``. ``num_classes`` is shared with the monitor.
    Other keyword arguments are :func:`agent.attach` options (``port``, ``num_classes``, ``sample_every``...).
    """

    def __init__(self, *, val_loss_key: str = "val_loss", preflight: Any = None, **options: Any) -> None:
        super().__init__()
        resolved = Options.resolve(**options)  # fail fast on a bad option, before any training starts
        self._console, self._num_classes = resolved.console_log, resolved.num_classes
        self._preflight = preflight_option(preflight, loss_fn_required=True)
        self.val_loss_key = val_loss_key
        self.options = options
        self.monitor: Monitor | None = None
        self.preflight_report: PreflightReport | None = None
        self._pending_state: dict[str, Any] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Fires once the optimizers exist and a checkpoint (if any) was restored: preflight, then attach."""
        import agent

        if self._preflight is not None and self.preflight_report is None and not trainer.global_step:
            self._run_preflight(trainer, pl_module)
        if self.monitor is not None:
            self.monitor.close()
        optimizers = getattr(trainer, "optimizers", None) or []
        optimizer = optimizers[0] if len(optimizers) == 1 else None  # several: boundaries from batches
        self.monitor = agent.attach(pl_module, optimizer, **self.options)
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None:
            self.monitor.watch_scaler(scaler)
        if self._pending_state is not None:
            self.monitor.load_state_dict(self._pending_state)
            self._pending_state = None
        elif trainer.global_step:
            self.monitor.step_index = int(trainer.global_step)

    def _run_preflight(self, trainer: Any, pl_module: Any) -> None:
        keywords, strict = dict(self._preflight[0]), self._preflight[1]
        loss_fn = keywords.pop("loss_fn")
        keywords.setdefault("num_classes", self._num_classes)
        loaders = trainer.train_dataloader
        if isinstance(loaders, dict):
            loaders = next(iter(loaders.values()))
        elif isinstance(loaders, (list, tuple)):
            loaders = loaders[0]
        batch = trainer.strategy.batch_to_device(first_batch(loaders))
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError("NNWatchCallback(preflight=...) needs training batches of (inputs, targets); call "
                            "agent.preflight(module, (inputs, targets), loss_fn) yourself for a "
                            f"{type(batch).__name__}")
        self.preflight_report = preflight(pl_module, (batch[0], batch[1]), loss_fn, **keywords)
        announce(self.preflight_report, strict, self._console)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Fires after each training batch: log its loss (a device tensor, no sync)."""
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) or isinstance(loss, float):
            self.monitor.log(loss=loss)
        if self.monitor._opt_ref is None and _accumulation_done(trainer, batch_idx):
            self.monitor.step()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Fires after each validation run: pass the logged validation loss on (overfitting check)."""
        if self.monitor is None or getattr(trainer, "sanity_checking", False):
            return
        value = trainer.callback_metrics.get(self.val_loss_key)
        if value is not None:
            self.monitor.log(val_loss=value)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Fires when fitting ends: remove every hook, push/serve the final state."""
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: the monitor's resumable state (see agent.state)."""
        return {"monitor": self.monitor.state_dict()} if self.monitor is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored before training starts; applied when the monitor attaches."""
        self._pending_state = state_dict.get("monitor")

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()


def _accumulation_done(trainer: Any, batch_idx: int) -> bool:
    every = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    return (batch_idx + 1) % every == 0


__all__ = ["NNWatchCallback"]

"""PyTorch Lightning: ``Trainer(callbacks=[NNWatchCallback()])`` watches the LightningModule being fitted.

A thin adapter over :func:`agent.attach`: the training loss comes from ``training_step``'s output, the
validation loss from the logged metric ``val_loss_key``, learning rates and step boundaries from the
optimizer's own hooks, a ``16-mixed`` GradScaler is watched, and the monitor's state is saved in and
restored from Lightning checkpoints. Works with ``lightning`` (``lightning.pytorch``) and the older
``pytorch_lightning`` package.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Options
from ..monitor import Monitor

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package of older releases
    from pytorch_lightning import Callback  # type: ignore[no-redef]


class NNWatchCallback(Callback):
    """Attaches an nnwatch Monitor when training starts and closes it when training ends.

    ``val_loss_key``: the name your ``validation_step`` logs its loss under (``self.log("val_loss", ...)``).
    Other keyword arguments are :func:`agent.attach` options (``port``, ``num_classes``, ``sample_every``...).
    """

    def __init__(self, *, val_loss_key: str = "val_loss", **options: Any) -> None:
        super().__init__()
        Options.resolve(**options)  # fail fast on a bad option, before any training starts
        self.val_loss_key = val_loss_key
        self.options = options
        self.monitor: Monitor | None = None
        self._pending_state: dict[str, Any] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Fires once the optimizers exist and a checkpoint (if any) was restored: attach here."""
        import agent

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

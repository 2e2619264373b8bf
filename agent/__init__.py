"""nnwatch: catch the silent failures of PyTorch training jobs and export model health to Prometheus.

    import agent
    monitor = agent.attach(model, optimizer)      # hooks in, /metrics served on port 9945
    ...
    monitor.log(loss=loss)                        # no host sync

    report = agent.preflight(model, (x, y), loss_fn, num_classes=10)   # before the long run: the recipe's checks
    report.raise_if_failed()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._version import __version__
from .checks.findings import Finding
from .config import _UNSET, DEFAULT_PORT, Options
from .monitor import Monitor
from .preflight import PreflightError, PreflightReport, PreflightResult, preflight


def attach(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    port: int | None = _UNSET,
    num_classes: int | None = _UNSET,
    **options: Any,
) -> Monitor:
    """Hook ``model`` (and ``optimizer``) and start exporting its health; returns the owning Monitor.

    ``port``: /metrics port (default 9945, or NNWATCH_PORT; 0 picks a free port; None serves nothing).
    ``num_classes``: classes of a cross-entropy loss, to check the first loss against ln(num_classes).
    Other options (see ``agent.Options``) can be passed as keywords or as ``NNWATCH_<NAME>`` variables.
    Raises TypeError/ValueError at once for arguments that cannot work, saying what to pass instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach() needs the torch.nn.Module being trained as its first argument, got {type(model).__name__}")
    if optimizer is not None:
        _check_optimizer(model, optimizer)
    opts = Options.resolve(port=port, num_classes=num_classes, **options)
    return Monitor(model, optimizer, opts)


def _check_optimizer(model: nn.Module, optimizer: Any) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer (the one that steps this model), got {type(optimizer).__name__}; "
            "pass optimizer=None and call monitor.step() after each update if you step parameters yourself"
        )
    model_ids = {id(p) for p in model.parameters()}
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if model_ids and not (model_ids & held):
        raise ValueError(
            "the optimizer holds none of the model's parameters; build it from this model "
            "(e.g. torch.optim.AdamW(model.parameters())) or pass the model it trains"
        )


__all__ = ["attach", "Monitor", "Finding", "Options", "DEFAULT_PORT", "__version__", "preflight", "PreflightReport",
           "PreflightResult", "PreflightError"]

"""The ``preflight=`` option of the Lightning and Hugging Face callbacks: checked when the callback is built,
run on the first training batch when training starts, its report logged (and raised with ``strict``)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, Iterable

from ..console import show_agent_logs
from .batch import RNGState
from .report import PreflightReport

log = logging.getLogger("nnwatch")


def preflight_option(value: Any, *, loss_fn_required: bool) -> tuple[dict[str, Any], bool] | None:
    """``(keywords for agent.preflight, strict)`` from a callback's ``preflight=``, or None when off.

    ``value``: None/False (off); True (defaults; only where the model computes its own loss); a loss function
    (``loss_fn(model(inputs), targets)``); or a dict of :func:`agent.preflight` keywords, ``loss_fn`` among
    them, plus ``strict`` (raise PreflightError and stop before training when a check fails; default False:
    log the report as a warning and train anyway). Raises TypeError/ValueError at once for a bad value.
    """
    from . import preflight

    if value is None or value is False:
        return None
    if value is True:
        options: dict[str, Any] = {}
    elif callable(value):
        options = {"loss_fn": value}
    elif isinstance(value, Mapping):
        options = dict(value)
    else:
        raise TypeError(f"preflight= takes True, a loss function or a dict of agent.preflight keywords, "
                        f"got {type(value).__name__}")
    strict = options.pop("strict", False)
    if not isinstance(strict, bool):
        raise TypeError(f"preflight strict= must be True or False, got {strict!r}")
    known = set(inspect.signature(preflight).parameters) - {"model", "batch"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown preflight option(s) {unknown}; agent.preflight takes {sorted(known)} and strict")
    if "loss_fn" in options and not callable(options["loss_fn"]):
        raise TypeError("preflight loss_fn must be callable as loss_fn(model(inputs), targets)")
    if loss_fn_required and "loss_fn" not in options:
        raise ValueError("preflight= needs the loss: pass the loss function (preflight=F.cross_entropy) or "
                         "preflight={'loss_fn': ..., ...}, called as loss_fn(model(inputs), targets)")
    return options, strict


def first_batch(loader: Iterable) -> Any:
    """The first batch of ``loader``; the random generators that starting an iterator draws from (shuffling,
    worker seeds) are put back, so training then sees the batches it would have seen."""
    rng = RNGState()
    try:
        return next(iter(loader))
    finally:
        rng.restore()


def announce(report: PreflightReport, strict: bool, console: bool = True) -> None:
    """Log the report on the ``nnwatch`` logger (INFO when every check passed, else WARNING; on stderr unless
    the application logs itself or ``console`` is off); with ``strict``, raise PreflightError on a failure."""
    if console:
        show_agent_logs()
    log.log(logging.INFO if report.ok else logging.WARNING, "%s", report)
    if strict:
        report.raise_if_failed()


__all__ = ["preflight_option", "first_batch", "announce"]

"""Preflight: the checks of a training recipe (seeds/002) run once on one batch, before the long run.

    report = agent.preflight(model, (inputs, targets), loss_fn, num_classes=10)
    print(report)                # check, verdict, the number, what to try; the total time
    report.raise_if_failed()     # for CI

Checks (docs/preflight.md): ``loss_at_init``, ``gradient_reachability``, ``overfit_one_batch``,
``batch_independence``, ``input_independent_baseline``. Everything runs on a deep copy of the model with its
own optimizer; the caller's model, optimizer and random generators are as they were afterwards.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import RNGState, batch_size, model_copy, regularisation_off, take, tree_map, zeroed
from .checks import (Setup, batch_independence, gradient_reachability, input_independent_baseline,
                     loss_at_init, overfit_one_batch)
from .report import CHECK_NAMES, PreflightError, PreflightReport, PreflightResult, SkippedResult

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def preflight(
    model: nn.Module,
    batch: tuple[Any, Any],
    loss_fn: Callable[[Any, Any], Tensor],
    *,
    num_classes: int | None = None,
    optimizer: OptimizerFactory | torch.optim.Optimizer | None = None,
    steps: int = 200,
    output_fn: Callable[[Any], Any] | None = None,
    examples: int = 16,
    expected_initial_loss: float | None = None,
    overfit_ratio: float = 0.1,
    overfit_target: float | None = None,
    pad_token: int = 0,
    zero_fn: Callable[[Any], Any] | None = None,
) -> PreflightReport:
    """Run the five preflight checks on ``batch = (inputs, targets)``; returns a :class:`PreflightReport`.

    ``loss_fn(model(inputs), targets)`` returns a scalar (mean-reduced) loss. The first dimension of every
    tensor in ``inputs``, ``targets`` and the output is the batch.
    ``num_classes``: classes of a cross-entropy loss: the first loss is checked against ln(num_classes) and the
    overfit target is ``overfit_ratio * ln(num_classes)``. When omitted it is inferred from an output of shape
    (N, C, ...) or (N, ..., C) with integer targets of the remaining shape (the report notes it).
    ``expected_initial_loss``: the expected first loss of other losses (else loss_at_init is skipped).
    ``optimizer``: a factory ``params -> Optimizer`` (default Adam, lr 1e-3), or an optimizer whose class and
    first param group's hyperparameters are reused; it is never stepped. Weight decay is set to 0.
    ``steps``: most optimizer steps of the overfit run (it stops once the target is reached).
    ``output_fn``: picks the logits from a tuple/dict/object output (default: a tensor output itself, else
    ``logits`` or the first floating tensor); ``loss_fn`` gets the raw output, or ``output_fn(output)`` when
    it raises on the raw one.
    ``examples``: examples of the batch used by the overfit, batch-independence and baseline checks.
    ``overfit_ratio`` / ``overfit_target``: "near zero" is ``overfit_ratio`` times ln(num_classes) for a
    classification, times the initial loss otherwise; ``overfit_target`` sets the value itself.
    ``pad_token``: the token id integer inputs become in the input-independent baseline.
    ``zero_fn``: builds the input-independent inputs from the inputs instead (default: floating tensors
    become 0, integer tensors ``pad_token``, boolean masks stay).
    """
    inputs, targets = _validate(model, batch, loss_fn, num_classes, optimizer, steps, examples, overfit_ratio)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("preflight trains a copy of the model: call it outside torch.inference_mode()")
    started = time.perf_counter()
    rng = RNGState()
    try:
        with torch.enable_grad():
            results, notes, n, size = _run(model, inputs, targets, loss_fn, num_classes=num_classes,
                                           optimizer=optimizer, steps=steps, output_fn=output_fn, examples=examples,
                                           expected=expected_initial_loss, ratio=overfit_ratio,
                                           overfit_target=overfit_target,
                                           zero_fn=zero_fn or functools.partial(zeroed, pad_token=pad_token))
    finally:
        rng.restore()
    return PreflightReport(results, time.perf_counter() - started, examples=n, batch_size=size, notes=tuple(notes))


def _run(model: nn.Module, inputs: Any, targets: Any, loss_fn: Callable, *, num_classes: int | None,
         optimizer: Any, steps: int, output_fn: Callable | None, examples: int, expected: float | None,
         ratio: float, overfit_target: float | None,
         zero_fn: Callable[[Any], Any]) -> tuple[list[PreflightResult], list[str], int, int]:
    notes: list[str] = []
    inner = getattr(model, "module", None) if isinstance(model, _WRAPPERS) else getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module):  # DDP/DataParallel or torch.compile: check the plain model inside
        notes.append(f"checked the {type(inner).__name__} inside {type(model).__name__}")
        model = inner
    clone = model_copy(model)
    regularisation_off(clone)
    inputs, targets = tree_map(Tensor.detach, inputs), tree_map(Tensor.detach, targets)  # no gradient reaches them
    setup = Setup(clone, loss_fn, output_fn)
    size = batch_size(inputs)
    n = min(examples, size)

    # One forward and backward of the whole batch: the loss at init and which parameters it reaches.
    out = _call("the model's forward", clone, inputs)
    loss = _first_loss(setup, out, targets, notes)
    first = float(loss.detach())
    classes = num_classes or _infer_classes(setup.logits(out), targets, first, notes)
    source = "expected_initial_loss" if expected is not None else f"ln({classes})"
    if expected is None and classes:
        expected = math.log(classes)
    results = {"loss_at_init": loss_at_init(first, expected, source)}
    if loss.requires_grad:
        loss.backward()
    results["gradient_reachability"] = gradient_reachability(clone, loss.requires_grad)
    del out, loss
    clone.zero_grad(set_to_none=True)

    sub_inputs, sub_targets = take(inputs, n, size), take(targets, n, size)
    results["batch_independence"] = batch_independence(setup, sub_inputs, n)
    regularisation_off(clone)
    clone.zero_grad(set_to_none=True)

    opt = _optimizer(optimizer, [p for p in clone.parameters() if p.requires_grad], notes)
    with torch.no_grad():
        initial = float(setup.loss(sub_inputs, sub_targets))
    if overfit_target is not None:
        target, target_text = overfit_target, f"{overfit_target:.4g} (overfit_target)"
    elif classes:
        target, target_text = ratio * math.log(classes), f"{ratio * math.log(classes):.3g} = {ratio:g} x ln({classes})"
    elif math.isfinite(initial) and initial > 0:
        target, target_text = ratio * initial, f"{ratio * initial:.3g} = {ratio:g} x the initial loss"
    else:
        target, target_text = None, ""
    results["overfit_one_batch"], run = overfit_one_batch(setup, sub_inputs, sub_targets, opt, steps, target,
                                                          target_text, n)
    results["input_independent_baseline"] = input_independent_baseline(setup, sub_inputs, sub_targets, run,
                                                                       zero_fn)
    return [results[name] for name in CHECK_NAMES], notes, n, size


def _call(what: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        exc.add_note(f"nnwatch preflight: {what} raised on the batch given to preflight()")
        raise


def _first_loss(setup: Setup, out: Any, targets: Any, notes: list[str]) -> Tensor:
    """loss_fn(output, targets); when that raises on a tuple/dict output and output_fn is given,
    loss_fn(output_fn(output), targets) from then on."""
    try:
        loss = setup.loss_fn(out, targets)
    except Exception as exc:
        if setup.output_fn is None or isinstance(out, Tensor):
            exc.add_note("nnwatch preflight: loss_fn(model(inputs), targets) raised on the batch given to preflight()")
            raise
        loss = _call("loss_fn(output_fn(model(inputs)), targets)", setup.loss_fn, setup.output_fn(out), targets)
        setup.loss_takes_logits = True
        notes.append(f"loss_fn raised on the model's output ({type(exc).__name__}); it gets output_fn(output)")
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(f"loss_fn must return a scalar tensor (a mean-reduced loss), got {got}")
    return loss.reshape(())


def _infer_classes(logits: Tensor | None, targets: Any, first: float, notes: list[str]) -> int | None:
    """C of an (N, C, ...) or (N, ..., C) output whose integer targets have the other dims, when the first loss
    is (within 10%) the cross-entropy of that output: a hinge or a sum-reduced loss is left alone."""
    if not (isinstance(logits, Tensor) and isinstance(targets, Tensor) and logits.is_floating_point()
            and not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool
            and logits.dim() == targets.dim() + 1 and logits.dim() >= 2 and math.isfinite(first)):
        return None
    for dim in (1, -1):
        rest = list(logits.shape)
        classes = rest.pop(dim)
        if rest != list(targets.shape) or classes < 2:
            continue
        labelled = targets[targets >= 0]  # ignore_index (-100) marks no class
        if labelled.numel() == 0 or int(labelled.max()) >= classes:
            return None
        with torch.no_grad():
            ce = float(F.cross_entropy(logits.detach().movedim(dim, 1).float(), targets))
        if not abs(first - ce) <= 0.1 * abs(ce):
            return None
        notes.append(f"num_classes={classes} inferred: the first loss is the cross-entropy of the output "
                     f"{tuple(logits.shape)} against its integer targets; pass num_classes= (or "
                     "expected_initial_loss=) to say otherwise")
        return classes
    return None


def _optimizer(optimizer: Any, params: list[nn.Parameter], notes: list[str]) -> torch.optim.Optimizer:
    if not params:
        params = [nn.Parameter(torch.zeros(()))]  # nothing to train: gradient_reachability says so
    if optimizer is None:
        opt = torch.optim.Adam(params, lr=1e-3)
    elif isinstance(optimizer, torch.optim.Optimizer):
        group = optimizer.param_groups[0]
        accepted = inspect.signature(type(optimizer)).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        hyper = {k: group.get(k, v) for k, v in optimizer.defaults.items() if takes_any or k in accepted}
        if "initial_lr" in group and "lr" in hyper:  # a scheduler's base rate, not where its warm-up starts
            hyper["lr"] = group["initial_lr"]
        opt = type(optimizer)(params, **hyper)
    else:
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a factory that returns a torch.optim.Optimizer for the params it is "
                            f"given (e.g. lambda p: torch.optim.SGD(p, lr=0.1)), got {type(opt).__name__}")
    for group in opt.param_groups:
        if group.get("weight_decay"):
            notes.append(f"weight decay {group['weight_decay']:g} set to 0 for the overfit run")
            group["weight_decay"] = 0.0
    return opt


def _validate(model: Any, batch: Any, loss_fn: Any, num_classes: Any, optimizer: Any, steps: Any,
              examples: Any, ratio: Any) -> tuple[Any, Any]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"preflight() needs the torch.nn.Module to be trained, got {type(model).__name__}")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise TypeError(f"batch must be a pair (inputs, targets), as a DataLoader yields it; got {type(batch).__name__}"
                        f"{length}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model(inputs), targets), got {type(loss_fn).__name__}")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 2):
        raise ValueError(f"num_classes must be an int >= 2 (classes of a cross-entropy loss), got {num_classes!r}")
    if optimizer is not None and not (callable(optimizer) or isinstance(optimizer, torch.optim.Optimizer)):
        raise TypeError("optimizer must be a factory params -> Optimizer (e.g. lambda p: torch.optim.SGD(p, lr=0.1)), "
                        f"got {type(optimizer).__name__}")
    for name, value in (("steps", steps), ("examples", examples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not 0 < ratio < 1:
        raise ValueError(f"overfit_ratio must be between 0 and 1 (a share of the reference loss), got {ratio!r}")
    return batch[0], batch[1]


__all__ = ["preflight", "PreflightReport", "PreflightResult", "PreflightError", "SkippedResult", "CHECK_NAMES"]

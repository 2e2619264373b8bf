"""The five preflight checks, each a function of the private model copy that returns a PreflightResult.

Preflight is not a hot path: losses and gradients are read on the host as they come (one sync each).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..checks.catalogue import BY_NAME
from .batch import pick_output, tree_map
from .report import PreflightResult, SkippedResult

INDEPENDENCE_TOLERANCE = 1e-6
"""A sample's output may depend on another sample's input by at most this share of its own input's gradient."""
BASELINE_FACTOR = 2.0
"""Zeroed inputs pass as "clearly worse" at this multiple of the real loss ..."""
BASELINE_UNDO = 0.5
"""... or when they undo this share of what the overfit run gained."""
MIN_GAIN = 1e-3
"""The overfit run must lower the loss by this share of its start for the baseline to be judged."""


@dataclass
class Setup:
    """The private model copy and how to get a loss from it."""

    model: nn.Module
    loss_fn: Callable[[Any, Any], Tensor]
    output_fn: Callable[[Any], Any] | None
    loss_takes_logits: bool = False
    """loss_fn gets output_fn(output) rather than the output (it raised on the output itself)."""

    def logits(self, out: Any) -> Tensor | None:
        picked = self.output_fn(out) if self.output_fn is not None else pick_output(out)
        return picked if isinstance(picked, Tensor) else None

    def loss(self, inputs: Any, targets: Any) -> Tensor:
        out = self.model(inputs)
        return self.loss_fn(self.output_fn(out) if self.loss_takes_logits else out, targets)


@dataclass
class OverfitRun:
    initial: float
    final: float
    steps: int
    seconds: float


def loss_at_init(first: float, expected: float | None, source: str) -> PreflightResult:
    """The first loss against its expected value, with the catalogue's tolerance (agent.checks.conditions)."""
    check = BY_NAME["loss_at_init"]
    if not math.isfinite(first):
        return PreflightResult("loss_at_init", False, first,
                               f"the first loss is {first}. Try: check the inputs and targets for NaN/Inf, look for "
                               "log/div of zero in the loss")
    if expected is None:
        return SkippedResult("loss_at_init", True, first,
                             f"first loss {first:.4g}; no expected value to compare with: pass num_classes= "
                             "(cross-entropy) or expected_initial_loss=")
    allowed = max(check.thresholds["relative"] * abs(expected), check.thresholds["absolute"])
    ok = abs(first - expected) <= allowed
    text = f"first loss {first:.4g}, expected {source} = {expected:.4g} ± {allowed:.2g}"
    return PreflightResult("loss_at_init", ok, first, text if ok else f"{text}. Try: {check.advice}")


def gradient_reachability(model: nn.Module, has_graph: bool) -> PreflightResult:
    """After one backward: every trainable parameter has a gradient with a non-zero element."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return PreflightResult("gradient_reachability", False, 0.0,
                               "the model has no trainable parameters (all have requires_grad=False)")
    missing = [name for name, p in trainable if p.grad is None]
    zero = [name for name, p in trainable if p.grad is not None and not _any_nonzero(p.grad)]
    bad = len(missing) + len(zero)
    if not bad:
        return PreflightResult("gradient_reachability", True, 0.0,
                               f"all {len(trainable)} trainable parameter tensors got a non-zero gradient from one "
                               "backward of the whole batch")
    parts = []
    if missing:
        parts.append(f"{len(missing)} got no gradient ({_names(missing)})")
    if zero:
        parts.append(f"{len(zero)} an all-zero gradient ({_names(zero)})")
    why = "" if has_graph else " The loss has no graph at all: is the model run under no_grad, or the loss detached?"
    return PreflightResult(
        "gradient_reachability", False, float(bad),
        f"of {len(trainable)} trainable parameter tensors, {' and '.join(parts)}.{why} Try: look for a detach(), "
        "torch.no_grad() or .item() between the layer and the loss, a layer built but never called or an "
        "activation that is dead for the whole batch; freeze deliberately unused parameters with "
        "requires_grad_(False)")


def batch_independence(setup: Setup, inputs: Any, n: int) -> PreflightResult:
    """The backprop trick, in eval mode: the gradient of sample i's output (a random projection of it) with
    respect to sample j's input must be zero for j != i. Integer inputs carry no gradient: the output of the
    first module that returns a floating tensor with the batch first (an embedding) stands in for them."""
    name = "batch_independence"
    if n < 2:
        return SkippedResult(name, True, None, "one example: nothing can mix")
    model = setup.model
    model.eval()
    leaves: list[Tensor] = []

    def leaf(t: Tensor) -> Tensor:
        if t.is_floating_point() and t.dim() >= 1 and t.shape[0] == n:
            leaves.append(t.detach().clone().requires_grad_(True))
            return leaves[-1]
        return t

    probe = tree_map(leaf, inputs)
    where = "the inputs"
    handles = []
    if not leaves:
        where = "?"

        def capture(module: nn.Module, args: Any, out: Any) -> Any:
            nonlocal where
            if leaves or not (isinstance(out, Tensor) and out.is_floating_point() and out.dim() >= 1
                              and out.shape[0] == n):
                return None
            leaves.append(out.detach().requires_grad_(True))  # replaces the output: gradients stop here
            where = f"the output of {names[module]} ({type(module).__name__}), as the inputs are not floating-point"
            return leaves[-1]

        names = {m: (name or type(m).__name__) for name, m in model.named_modules()}
        handles = [m.register_forward_hook(capture) for m in model.modules() if m is not model]
    try:
        logits = setup.logits(model(probe))
    finally:
        for h in handles:
            h.remove()
    if not leaves:
        return SkippedResult(name, True, None, "no floating-point tensor with the batch first reaches the model's "
                                               "layers: nothing to take gradients at")
    if logits is None or logits.dim() == 0 or logits.shape[0] != n:
        shape = None if logits is None else tuple(logits.shape)
        return SkippedResult(name, True, None, f"the output (shape {shape}) does not have the batch ({n}) as its "
                                               "first dimension; pass output_fn= to pick the per-example logits")
    if not logits.requires_grad:
        return SkippedResult(name, True, None, f"the output has no gradient path to {where} (a detach() or "
                                               "no_grad in forward?): nothing to compare")
    generator = torch.Generator().manual_seed(0)
    worst, worst_sample, mixed, reached = 0.0, 0, 0, False
    samples = sorted({0, n // 2, n - 1})
    for i in samples:
        weights = torch.randn(logits[i].shape, generator=generator).to(logits)
        grads = torch.autograd.grad((logits[i] * weights).sum(), leaves, retain_graph=True, allow_unused=True)
        per_sample = torch.zeros(n, dtype=torch.float64)
        for g in grads:
            if g is not None:
                per_sample = torch.maximum(per_sample, g.detach().abs().flatten(1).amax(1).double().cpu())
        own = float(per_sample[i])
        reached = reached or bool(per_sample.max() > 0)
        per_sample[i] = 0.0
        other = float(per_sample.max())
        leak = other / own if own > 0 else (math.inf if other > 0 else 0.0)
        if leak > worst:
            worst, worst_sample = leak, i
            mixed = int((per_sample > INDEPENDENCE_TOLERANCE * own).sum())
    if not reached:
        return SkippedResult(name, True, None, f"the outputs do not depend on {where} at all: nothing can mix "
                                               "(see input_independent_baseline)")
    if worst <= INDEPENDENCE_TOLERANCE:
        return PreflightResult(name, True, worst,
                               f"in eval mode, the outputs of samples {', '.join(map(str, samples))} of {n} depend on "
                               f"their own example only (gradients at {where})")
    return PreflightResult(
        name, False, worst,
        f"in eval mode, the output of sample {worst_sample} depends on {mixed} other example(s) of the batch "
        f"(largest gradient {worst:.3g}x its own, at {where}). Try: look for a view()/reshape() that should be a "
        "transpose()/permute(), batch_first mixed up in an RNN or attention layer, or a reduction over dim 0. "
        "Models that mix samples on purpose (attention across the batch) fail this check by design")


def overfit_one_batch(setup: Setup, inputs: Any, targets: Any, optimizer: torch.optim.Optimizer, steps: int,
                      target: float | None, target_text: str, n: int) -> tuple[PreflightResult, OverfitRun]:
    """Train the copy on ``n`` examples (regularisation off) until the loss reaches ``target`` or ``steps``
    optimizer steps were taken. ``target`` None: run every step, judge nothing."""
    name = "overfit_one_batch"
    started = time.perf_counter()
    losses: list[float] = []
    for step in range(steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = setup.loss(inputs, targets)
        losses.append(float(loss.detach()))  # a host sync per step, on purpose: preflight stops at the target
        if (step == steps or not math.isfinite(losses[-1]) or not loss.requires_grad
                or (target is not None and losses[-1] <= target)):
            break
        loss.backward()
        optimizer.step()
    run = OverfitRun(losses[0], losses[-1], len(losses) - 1, time.perf_counter() - started)
    took = f"{run.steps} steps, {run.seconds:.2f} s"
    if not math.isfinite(run.final):
        return PreflightResult(name, False, run.final,
                               f"the loss on {n} examples became {run.final} after {took}. Try: lower the learning "
                               "rate, look for log/div of zero or sqrt of negatives"), run
    if target is None:
        return SkippedResult(name, True, run.final,
                             f"the loss on {n} examples went from {run.initial:.4g} to {run.final:.4g} ({took}); "
                             "it starts at or below 0, so there is no near-zero to reach: pass overfit_target="), run
    text = f"the loss on {n} examples went from {run.initial:.4g} to {run.final:.4g} ({took}); target {target_text}"
    if run.final <= target:
        return PreflightResult(name, True, run.final, text), run
    return PreflightResult(name, False, run.final, f"{text}. {_overfit_hint(losses, loss.requires_grad)}"), run


def _overfit_hint(losses: list[float], has_graph: bool) -> str:
    first, last = losses[0], losses[-1]
    if not has_graph:
        return "The loss has no gradient. Try: remove the detach()/no_grad()/.item() between the model and the loss"
    if abs(first - last) <= 1e-6 * max(abs(first), 1e-12):
        why = "The loss did not move: a learning rate of 0, or no gradient reaches the weights. "
    else:
        tail = losses[-max(2, len(losses) // 5):]
        still = tail[0] - tail[-1] > 0.25 * (first - last) > 0
        why = ("It was still falling: more steps= or a higher learning rate may get there. " if still else
               "It stalled above zero. ")
    return (f"{why}Try: raw logits into the loss (not softmax/sigmoid probabilities), a learning rate above 0, no "
            "detach() or frozen head, a model with enough capacity for these examples; for a loss whose minimum "
            "is above 0 (label smoothing, soft targets) pass overfit_target=")


def input_independent_baseline(setup: Setup, inputs: Any, targets: Any, run: OverfitRun,
                               zero_fn: Callable[[Any], Any]) -> PreflightResult:
    """After the overfit run, the loss on zeroed inputs against the loss on the real ones."""
    name = "input_independent_baseline"
    with torch.no_grad():
        real = float(setup.loss(inputs, targets))
        zero = float(setup.loss(zero_fn(inputs), targets))
    gain = run.initial - real
    if not (math.isfinite(real) and math.isfinite(run.initial)) or gain <= MIN_GAIN * abs(run.initial):
        return SkippedResult(name, True, zero,
                             f"the overfit run did not lower the loss ({run.initial:.4g} -> {real:.4g}): the model "
                             "learned nothing to take away (see overfit_one_batch)")
    if math.isnan(zero):
        return SkippedResult(name, True, zero, "the loss on zeroed inputs is nan (does the model divide by its "
                                               "input?): no baseline to compare")
    text = f"after the overfit run, the loss is {zero:.4g} on zeroed inputs and {real:.4g} on the real ones"
    ok = (real > 0 and zero >= BASELINE_FACTOR * real) or zero - real >= BASELINE_UNDO * gain
    if ok:
        return PreflightResult(name, True, zero, f"{text}: the model uses its input")
    return PreflightResult(
        name, False, zero,
        f"{text}: zeroing the input costs almost nothing, the model ignores it. Try: check that forward() uses its "
        "input (not a cached tensor, a position or index feature, or the targets), that the input is not "
        "all-constant after preprocessing, and that the input layer's weights are not zero")


def _any_nonzero(grad: Tensor) -> bool:
    if grad.is_sparse:
        grad = grad.coalesce().values()
    return bool(grad.count_nonzero() > 0)


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


__all__ = ["Setup", "SkippedResult", "loss_at_init", "gradient_reachability", "batch_independence",
           "overfit_one_batch", "input_independent_baseline", "OverfitRun"]

"""What the loss receives on sampled steps: probabilities where it expects logits, and the class labels.

The classification losses are seen at the call itself: ``torch.nn.functional.cross_entropy``, ``nll_loss`` and
``binary_cross_entropy_with_logits`` are wrapped while a monitor is open (the loss modules call them through
``torch.nn.functional``, so ``nn.CrossEntropyLoss`` is seen too). The wrapper passes every call through
unchanged; only the first call after a sampled training forward of a watched model is inspected, with a few
reductions on a slice of the input (device work, read in the sample's one batched copy). The call belongs to
the model whose forward ended last (in a GAN, the discriminator's loss is the discriminator's).

A loss imported by name before ``attach()`` (``from torch.nn.functional import cross_entropy``) keeps the
unwrapped function and is not seen.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable

import torch
from torch import Tensor
import torch.nn.functional as F

from .transfer import DeviceBatch

WATCHED = ("cross_entropy", "nll_loss", "binary_cross_entropy_with_logits")
ROWS = 8
"""Leading samples of the loss input inspected for probabilities (the verdict does not need more)."""
MAX_CLASSES = 1024
"""Class counts are kept for at most this many classes (beyond: a vocabulary, not a label set)."""
SUM_TOLERANCE = 1e-2
"""A row counts as a probability vector when its entries lie in [0, 1] and sum to 1 within this (fp16-safe)."""

_watches: "weakref.WeakSet[LossWatch]" = weakref.WeakSet()
_last: "weakref.ref[LossWatch] | None" = None
_originals: dict[str, Callable[..., Any]] = {}


class LossWatch:
    """One monitor's view of its loss calls on sampled steps."""

    def __init__(self, guard_call: Callable[..., Any]) -> None:
        self._guard_call = guard_call
        self.armed = False
        self._seen = False
        self._pending: dict[str, Any] = {}
        self.result: dict[str, Any] = {}
        self.init_shifted = False
        """A class-weighted loss with label smoothing was seen: its loss at init is not ln(classes)."""
        _watches.add(self)
        _install()

    def arm(self) -> None:
        """A sampled training forward of the watched model ended: inspect the next loss call."""
        global _last
        self.armed, self._seen = True, False
        _last = weakref.ref(self)

    def inspect(self, name: str, inp: Any, target: Any, kwargs: dict[str, Any]) -> None:
        """Queue device flags for the first watched loss call after the sampled forward (no host sync)."""
        if self._seen or not isinstance(inp, Tensor) or not inp.is_floating_point() or inp.numel() == 0:
            return
        self._seen = True
        with torch.no_grad():
            x = inp.detach()
            if name == "binary_cross_entropy_with_logits":
                if _affine_producer(inp):  # logits straight from a linear layer: in [0, 1] by chance only
                    return
                values = x.reshape(-1)[:ROWS * 512].float()
                in_unit = (values.amin() >= 0) & (values.amax() <= 1) & (values.amax() > values.amin())
                self._pending = {"function": name, "flag": in_unit if values.numel() >= 32 else None}
                return
            classes = x.shape[1] if x.ndim >= 2 else x.shape[0]
            if classes < 2:
                return
            rows = (x[:ROWS] if x.ndim >= 2 else x[None]).float()
            rows = rows.movedim(1, -1).reshape(-1, classes)
            # cross_entropy and nll_loss: every row a probability vector (softmax output, no log taken)
            probs = (rows.amin() >= 0) & (rows.amax() <= 1) & ((rows.sum(-1) - 1).abs().amax() <= SUM_TOLERANCE)
            self._pending = {"function": name, "flag": probs, "classes": classes, "rows": x.shape[0],
                             "weighted": kwargs.get("weight") is not None,
                             # class weights with label smoothing: torch scales the smoothing term by the batch's
                             # target weights, so the loss at init is no longer ln(classes)
                             "init_shifted": kwargs.get("weight") is not None
                             and float(kwargs.get("label_smoothing") or 0.0) > 0}
            if isinstance(target, Tensor) and target.ndim == 1 and not target.is_floating_point() \
                    and classes <= MAX_CLASSES and target.numel() == x.shape[0]:
                t = target.detach()
                t = t[(t >= 0) & (t < classes)]  # ignore_index (padding) and anything out of range
                self._pending["counts"] = torch.bincount(t.long(), minlength=classes).float()

    def queue(self, batch: DeviceBatch) -> None:
        """Queue this sample's flags; disarm until the next sampled forward."""
        self.armed = False
        pending, self._pending = self._pending, {}
        self.result = {}
        if not pending:
            return
        self.result = {k: v for k, v in pending.items() if k in ("function", "classes", "weighted", "rows",
                                                                     "init_shifted")}
        if pending.get("flag") is not None:
            batch.add("loss_input_flag", pending["flag"].float())
        counts = pending.get("counts")
        if counts is not None:
            batch.add_vector([("class", k) for k in range(counts.numel())], counts)

    def read(self, host: dict, batch: int | None) -> tuple[str | None, tuple[int, ...] | None, bool]:
        """(function that received probabilities or None, this batch's class counts or None, weighted loss);
        ``init_shifted`` tells whether the loss at init departs from ln(classes) by construction.

        Counts are kept only when the loss has one label per sample of the model's batch (``batch``): a loss
        over every token of a sequence (rows = batch x length) labels tokens, whose frequencies are no class
        balance."""
        result = self.result
        misuse = result.get("function") if host.get("loss_input_flag") == 1.0 else None
        classes = result.get("classes")
        per_sample = batch is None or result.get("rows") == batch
        counts = tuple(int(host[("class", k)]) for k in range(classes)) \
            if classes and per_sample and ("class", 0) in host else None
        self.init_shifted = self.init_shifted or bool(result.get("init_shifted"))
        self.result = {}
        return misuse, counts, bool(result.get("weighted"))

    def close(self) -> None:
        _watches.discard(self)
        if not len(_watches):
            _uninstall()


_SHAPE_ONLY = frozenset({
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "SqueezeBackward0", "SqueezeBackward1",
    "SqueezeBackward2", "SqueezeBackward3", "UnsqueezeBackward0", "TBackward0", "PermuteBackward0",
    "TransposeBackward0", "TransposeBackward1", "SelectBackward0", "SliceBackward0", "ExpandBackward0",
    "CloneBackward0", "CatBackward0", "IndexBackward0", "ToCopyBackward0", "FlattenBackward0",
})
"""Autograd nodes that move or copy values without changing them: looked through to the op that made them."""
_AFFINE = frozenset({
    "AddmmBackward0", "MmBackward0", "BmmBackward0", "MvBackward0", "AddmvBackward0", "BaddbmmBackward0",
    "ConvolutionBackward0", "LinearBackward0", "AddBackward0", "SubBackward0",
})
"""Ops whose outputs are unbounded (a linear layer, a bias added): logits, whatever range a batch shows."""


def _affine_producer(t: Tensor) -> bool:
    """Whether the autograd graph says ``t`` came from a linear layer (through reshapes only): then values in
    [0, 1] are logits that happen to be small (a GAN's discriminator near equilibrium), not sigmoid outputs."""
    fn = t.grad_fn
    for _ in range(16):
        if fn is None:
            return False
        name = fn.name()
        if name in _AFFINE:
            return True
        if name not in _SHAPE_ONLY:
            return False
        fn = next((f for f, _ in fn.next_functions if f is not None), None)
    return False


def _wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def watched(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():  # traced by dynamo: pass straight through
            watch = _last() if _last is not None else None
            if watch is not None and watch.armed:
                watch._guard_call("loss_input", watch.inspect, name, input, target, kwargs)
        return original(input, target, *args, **kwargs)

    watched.__nnwatch_original__ = original  # type: ignore[attr-defined]
    return watched


def _install() -> None:
    for name in WATCHED:
        current = getattr(F, name)
        if getattr(current, "__nnwatch_original__", None) is None:
            _originals[name] = current
            setattr(F, name, _wrap(name, current))


def _uninstall() -> None:
    global _last
    for name, original in list(_originals.items()):
        if getattr(getattr(F, name), "__nnwatch_original__", None) is original:
            setattr(F, name, original)
        del _originals[name]
    _last = None


__all__ = ["LossWatch", "WATCHED"]

"""Preflight's plumbing: nested batches (slice, zero, walk), the model's output, the private model copy, RNG states.

Inputs and targets may be a tensor or tuples, lists and dicts of tensors; the batch is the first dimension
of every tensor whose first dimension has the batch's size (other tensors pass through unchanged).
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

_PACKAGE = __name__.partition(".")[0]
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")
_HOOK_FLAGS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def tree_map(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside tuples, lists and dicts (other leaves kept)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
        return type(obj)(*(tree_map(fn, v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, v) for v in obj)
    if isinstance(obj, Mapping):
        mapped = {k: tree_map(fn, v) for k, v in obj.items()}
        try:
            return type(obj)(mapped)
        except Exception:  # a mapping type that cannot be rebuilt from a dict
            return mapped
    return obj


def tensors(obj: Any) -> list[Tensor]:
    """Every tensor in ``obj``, depth first."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in tensors(v)]
    return []


def batch_size(inputs: Any) -> int:
    """Size of the first dimension of the first tensor in ``inputs``."""
    for t in tensors(inputs):
        if t.dim() >= 1:
            return int(t.shape[0])
    raise TypeError("preflight needs inputs with at least one tensor whose first dimension is the batch, "
                    f"got {type(inputs).__name__}")


def take(obj: Any, n: int, size: int) -> Any:
    """The first ``n`` examples: tensors whose first dimension is the batch (``size``) are sliced."""
    return tree_map(lambda t: t[:n] if t.dim() >= 1 and t.shape[0] == size else t, obj)


def zeroed(obj: Any, pad_token: int) -> Any:
    """Input-independent inputs: floating tensors become zeros, integer tensors ``pad_token`` (token ids),
    boolean tensors (masks) are kept."""

    def zero(t: Tensor) -> Tensor:
        if t.dtype == torch.bool:
            return t
        if t.is_floating_point() or t.is_complex():
            return torch.zeros_like(t)
        return torch.full_like(t, pad_token)

    return tree_map(zero, obj)


def pick_output(out: Any) -> Tensor | None:
    """The logits of a model output: the tensor itself, a mapping's ``logits`` (else its first floating
    tensor), an object's ``.logits`` attribute, or a tuple's first floating tensor."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        if isinstance(out.get("logits"), Tensor):
            return out["logits"]
        values = list(out.values())
    elif isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        return None
    return next((v for v in values if isinstance(v, Tensor) and v.is_floating_point()), None)


def regularisation_off(model: nn.Module) -> None:
    """Training behaviour without regularisation: every module in eval mode (dropout, stochastic depth and
    functional ``F.dropout(..., training=self.training)`` off) except normalisation layers with running
    statistics (BatchNorm, InstanceNorm), which keep normalising with the batch's statistics as in training."""
    for m in model.modules():
        m.training = isinstance(m, _NormBase)  # set per module: .eval()/.train() would recurse into children


def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy to train: nnwatch's own hooks (an attached Monitor) are left behind, the model's other
    hooks (pruning masks, weight norm) come along; gradients are cleared."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        drop = set()
        for name in _HOOK_DICTS:
            hooks = getattr(m, name, None)
            if hooks:
                drop |= {key for key, hook in hooks.items() if _is_ours(hook)}
        if not drop:
            continue
        for name in _HOOK_DICTS + _HOOK_FLAGS:
            hooks = getattr(m, name, None)
            if hooks is not None:
                kept = type(hooks)((k, v) for k, v in hooks.items() if k not in drop)
                memo[id(hooks)] = copy.deepcopy(kept, memo)
    try:
        clone = copy.deepcopy(model, memo)
    except Exception as exc:
        raise TypeError(
            f"preflight trains a copy of the model and copy.deepcopy(model) failed ({type(exc).__name__}: {exc}); "
            "run preflight before attaching objects that cannot be copied (locks, open files, process groups), "
            "or on the plain model before wrapping it (DDP, FSDP)") from exc
    for p in clone.parameters():
        p.grad = None
    return clone


def _is_ours(hook: Any) -> bool:
    """Whether a module hook belongs to this package (a Monitor's bound method, a probe's closure)."""
    target = getattr(hook, "func", hook)  # functools.partial
    owner = getattr(target, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(target, "__module__", None)
    module = module or type(target).__module__
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


class RNGState:
    """Every random generator a training script uses: torch (CPU and, when initialised, each CUDA device),
    Python's ``random`` and, when imported, NumPy's global generator."""

    def __init__(self) -> None:
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python = random.getstate()
        numpy = sys.modules.get("numpy")
        self.numpy = numpy.random.get_state() if numpy is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)


__all__ = ["tree_map", "tensors", "batch_size", "take", "zeroed", "pick_output", "regularisation_off",
           "model_copy", "RNGState"]

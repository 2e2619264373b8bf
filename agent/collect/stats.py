"""Pure tensor kernels: squared norms, non-finite counts, activation statistics.

Every function returns device tensors and never reads a value on the host (no sync). Callers run them
under ``torch.no_grad()``; inputs are never modified.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import torch
from torch import Tensor

from . import native


def _groups(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def local_values(t: Tensor) -> Tensor:
    """The elements this process holds, as a dense tensor: a sparse gradient's coalesced values (duplicate
    indices summed first, as the optimizer sees them), a DTensor's local shard (FSDP2), else ``t``."""
    if t.layout is torch.strided and type(t) in _PLAIN:  # the common case, checked first: called per tensor
        return t
    if t.is_sparse:
        return t.coalesce().values()
    if t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        return t.values()
    to_local = getattr(t, "to_local", None)  # DTensor: never all-gather, the shard's share adds up over ranks
    return to_local() if to_local is not None else t


def readable_values(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The locally held values of each tensor, detached when autograd is on (callers normally use no_grad)."""
    if torch.is_grad_enabled():
        return [local_values(t.detach()) for t in tensors]
    return [local_values(t) for t in tensors]


def squared_norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Sum of squares of each tensor, as a float32 0-d tensor on the tensor's own device.

    Squared norms (not norms) so that layers, shards and ranks add up exactly: the norm of a union is
    ``sqrt(sum(squared))``, never a sum of norms. On CPU one dot product per tensor; elsewhere one
    ``_foreach_norm`` per (device, dtype) group; float32 accumulation for low-precision inputs. Sparse and
    sharded tensors count the elements held here.
    """
    fast = _cpu_float32_dots(tensors)
    if fast is not None:
        return fast
    out: list[Tensor | None] = [None] * len(tensors)
    rest: list[Tensor] = []
    rest_idx: list[int] = []
    dot = torch.dot
    for i, t in enumerate(readable_values(tensors)):
        if t.is_cpu and t.dtype in _CPU_DOT:
            # One BLAS dot per tensor reads it once at the memory-bandwidth floor, with no sqrt/square
            # round trip, and beats _foreach_norm below ~16M parameters (DESIGN.md, measured). Lists of
            # float32 tensors that all allow a view take _cpu_float32_dots instead: the same dots, unchecked.
            flat = t if t.ndim == 1 else t.reshape(-1)  # a view for contiguous tensors
            sq = dot(flat, flat)
            out[i] = sq if t.dtype is torch.float32 else sq.float()
        else:
            rest.append(t)
            rest_idx.append(i)
    for (device, dtype), idx in _groups(rest).items():
        group = [rest[k] for k in idx]
        try:
            roots = torch._foreach_norm(group, 2, dtype=torch.float32)
        except (RuntimeError, TypeError):  # older torch / exotic dtype: per-tensor fallback
            roots = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in group]
        for k, sq in zip(idx, torch._foreach_mul(roots, roots)):  # one launch for the whole group
            out[rest_idx[k]] = sq
    return out  # type: ignore[return-value]


_CPU_DOT = (torch.float32, torch.float64)


_NATIVE_MISS = (RuntimeError, NotImplementedError, TypeError, ValueError)
"""What the native ops raise for a list they do not take (another dtype, a non-contiguous or sparse tensor)."""


def _native_candidate(tensors: Sequence[Tensor]) -> object | None:
    """The native ops when they are loaded and the list may be theirs (checked on its first tensor;
    the op checks every tensor and raises for a list it does not take)."""
    ops = native.kernels()
    if ops is None or not tensors:
        return None
    t = tensors[0]
    return ops if t.is_cpu and type(t) in _PLAIN else None


def _stack_on_first(values: Sequence[Tensor]) -> Tensor:
    if not values:
        return torch.zeros(0)
    dev = values[0].device
    return torch.stack([v if v.device == dev else v.to(dev) for v in values])


def device_groups(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by device, in first-seen order: one group in the common case. For
    callers that want one vector per device (``squared_norm_vector`` moves values to one device)."""
    if not tensors:
        return []
    first = tensors[0].device
    devices = [t.device for t in tensors]
    if all(d == first for d in devices):
        return [list(range(len(tensors)))]
    groups: dict[torch.device, list[int]] = defaultdict(list)
    for i, d in enumerate(devices):
        groups[d].append(i)
    return list(groups.values())


def squared_norm_vector(tensors: Sequence[Tensor]) -> Tensor:
    """``squared_norms`` as one 1-D float32 tensor (entry i for tensor i) on the first tensor's device.

    The form the agent uses: one tensor per list, so a sampled step never handles a value per parameter
    in Python. Dense contiguous float32 CPU tensors go through one native call for the whole list when
    the kernels are built (agent.collect.native): at the rate of one flat read of the data, where one dot product
    per tensor costs about a microsecond each. Otherwise ``squared_norms``, stacked; values from other
    devices are moved to the first tensor's device. An empty list gives an empty CPU tensor.
    """
    ops = _native_candidate(tensors)
    if ops is not None:
        try:
            return ops.sum_squares(list(tensors))  # type: ignore[attr-defined]
        except _NATIVE_MISS:
            pass  # not all dense contiguous float32 CPU tensors: the torch-op path below
    return _stack_on_first(squared_norms(tensors))


def update_squared_norm_vectors(new: Sequence[Tensor], old: Sequence[Tensor], *,
                                overwrite_old: bool = False) -> tuple[Tensor, Tensor]:
    """``update_squared_norms`` as two 1-D float32 tensors: ``(||new_i - old_i||^2, ||new_i||^2)``.

    With the native kernels and dense contiguous float32 CPU tensors, one call reads each pair once
    (8 bytes per parameter) and writes nothing, ``old`` included. Otherwise ``update_squared_norms``,
    which with ``overwrite_old=True`` may overwrite ``old`` (a scratch copy the caller owns).
    """
    if len(new) != len(old):
        raise ValueError(f"update_squared_norm_vectors needs pairs, got {len(new)} new and {len(old)} old tensors")
    ops = _native_candidate(new)
    if ops is not None:
        try:
            both = ops.update_sums(list(new), list(old))  # type: ignore[attr-defined]
            return both[0], both[1]
        except _NATIVE_MISS:
            pass
    upd, wsq = update_squared_norms(new, old, overwrite_old=overwrite_old)
    return _stack_on_first(upd), _stack_on_first(wsq)




def _cpu_float32_dots(tensors: Sequence[Tensor]) -> list[Tensor] | None:
    """The common case of ``squared_norms`` in one tight pass, or None when it does not apply.

    Plain dense float32 CPU tensors (a model's weights and gradients) need no detach, no local view and
    no cast: one dot product each, 1-D tensors as they are, others through a view. At a few hundred small
    tensors the Python around each kernel call is a third of the time, so this path checks all tensors
    once and then only calls kernels (about 20% faster than the general loop on a 1M-parameter
    transformer's 216 tensors, measured). A tensor whose view fails (non-contiguous) sends the whole list
    to the general path, which reshapes.
    """
    if torch.is_grad_enabled():
        return None
    f32, strided, plain = torch.float32, torch.strided, _PLAIN
    if not all(t.dtype is f32 and t.layout is strided and t.is_cpu and type(t) in plain for t in tensors):
        return None
    try:
        flats = [t if t.ndim == 1 else t.view(-1) for t in tensors]
    except RuntimeError:
        return None
    dot = torch.dot
    return [dot(v, v) for v in flats]


def nonfinite_count(t: Tensor) -> Tensor:
    """Number of NaN/Inf elements of ``t`` (int64 0-d, on t's device); sparse/sharded: of the values held."""
    t = local_values(t.detach())
    if t.is_complex():
        return t.numel() - torch.isfinite(t).sum()
    return nonfinite_float_count(t).long()


def nonfinite_float_count(t: Tensor) -> Tensor:
    """Number of NaN/Inf elements of a dense tensor as a float 0-d tensor (exact: float32 below 2**24
    elements, float64 above), without boolean reductions.

    ``t * 0`` is 0 for every finite element and NaN for NaN and +-inf; ``nan_to_num_(1)`` turns that into
    0/1 and a float sum counts the ones: three light passes, 4-6x cheaper on CPU than ``isfinite(t).sum()``
    (a boolean reduction; DESIGN.md, measured).
    """
    n = t.numel()
    if n == 0 or not t.is_floating_point():
        return torch.zeros((), dtype=torch.float32, device=t.device)
    acc = torch.float32 if n < 2**24 or t.device.type == "mps" else torch.float64
    return torch.mul(t, 0).nan_to_num_(1.0).sum(dtype=acc)


def difference_squared_norms(new: Sequence[Tensor], old: Sequence[Tensor], *, overwrite_old: bool = False) -> list[Tensor]:
    """``||new_i - old_i||^2`` for each pair (float32 0-d tensors), e.g. the size of an optimizer update.

    With ``overwrite_old=True`` the difference is computed in place in ``old`` (a scratch copy the caller
    owns), which saves allocating and writing a second copy of the weights.
    """
    if not new:
        return []
    cur, prev = readable_values(new), readable_values(old)
    if overwrite_old:
        torch._foreach_sub_(prev, cur)  # old - new: the same squared norm
        return squared_norms(prev)
    return squared_norms(torch._foreach_sub(cur, prev))


_CHUNK = 1 << 18
"""Elements per chunk of the fused update kernel: 1 MiB of float32, so a chunk of the weights and of the
difference stay in cache between the subtraction and the two dot products."""

_FUSE_MIN = 1 << 20
"""Tensors above this many elements (4 MiB of float32) take the chunked path. Below it, everything sits in
cache anyway and one subtraction plus two dot products over the whole tensor is faster (measured)."""


def update_squared_norms(new: Sequence[Tensor], old: Sequence[Tensor], *,
                         overwrite_old: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """``(||new_i - old_i||^2, ||new_i||^2)`` for each pair (float32 0-d tensors): an optimizer update and
    the weights after it, e.g. for update ratios.

    With ``overwrite_old=True`` (``old`` is a scratch copy the caller owns) the difference is computed in
    place in ``old``. Large CPU tensors are then walked in cache-sized chunks: each chunk of ``old`` is
    overwritten with the difference and both dot products read from cache, so main memory sees one read
    of each tensor and one write of ``old`` (12 bytes per float32 element) instead of the 20 of
    subtract-then-norm. Smaller tensors, other devices and ``overwrite_old=False`` (inputs untouched,
    the differences allocated): ``_foreach_sub`` and ``squared_norms``.
    """
    cur, prev = readable_values(new), readable_values(old)
    upd: list[Tensor | None] = [None] * len(cur)
    wsq: list[Tensor | None] = [None] * len(cur)
    fused = [k for k, (a, b) in enumerate(zip(cur, prev))
             if overwrite_old and a.numel() > _FUSE_MIN and a.is_cpu and b.is_cpu
             and a.dtype in _CPU_DOT and b.dtype == a.dtype and a.numel() == b.numel()] if overwrite_old else []
    dot = torch.dot
    for k in fused:
        fa, fb = cur[k].reshape(-1), prev[k].reshape(-1)
        d, s = [], []
        for i in range(0, fa.numel(), _CHUNK):
            x, y = fa[i : i + _CHUNK], fb[i : i + _CHUNK]
            y.sub_(x)  # old - new: the same squared norm
            d.append(dot(y, y))
            s.append(dot(x, x))
        upd[k] = torch.stack(d).sum().float()
        wsq[k] = torch.stack(s).sum().float()
    rest = [k for k in range(len(cur)) if upd[k] is None] if fused else list(range(len(cur)))
    if rest:
        if overwrite_old:
            diffs = [prev[k] for k in rest]
            torch._foreach_sub_(diffs, [cur[k] for k in rest])  # old - new: the same squared norm
        else:
            diffs = torch._foreach_sub([cur[k] for k in rest], [prev[k] for k in rest])
        for k, u, w in zip(rest, squared_norms(diffs), squared_norms([cur[k] for k in rest])):
            upd[k], wsq[k] = u, w
    return upd, wsq  # type: ignore[return-value]


def unit_dims(ndim: int) -> tuple[int, ...]:
    """Dimensions reduced to get per-unit statistics of an activation output.

    Units are channels for image-like outputs (N, C, H, W[, D]) and the last dimension for (N, F) and
    (N, T, F) outputs. A 1-D output is one sample of units.
    """
    if ndim <= 1:
        return ()
    if ndim >= 4:
        return (0,) + tuple(range(2, ndim))
    return tuple(range(ndim - 1))


def unit_axis(ndim: int) -> int:
    """Index of the unit axis for an output of ``ndim`` dimensions (see unit_dims)."""
    if ndim <= 1:
        return 0
    return 1 if ndim >= 4 else ndim - 1


def unit_peaks(out: Tensor) -> Tensor:
    """Largest value of each unit in this batch (1-D over units, see unit_dims). NaN and +inf propagate,
    so a finite peak vector also proves every element finite except -inf."""
    out = out.detach()
    if out.ndim == 0:
        return out.reshape(1)
    if out.ndim >= 4:
        # Two steps beat one strided reduction over (N, H, W) by 1.2-7x (measured, same values): small maps
        # reduce the batch first (an elementwise max of samples), larger ones their contiguous maps first.
        if math.prod(out.shape[2:]) < 64:
            return out.amax(0).flatten(1).amax(1)
        return out.flatten(2).amax(2).amax(0)
    dims = unit_dims(out.ndim)
    return out.amax(dim=dims) if dims else out


def alive_units(out: Tensor) -> Tensor:
    """Bool mask over units: True where any element of the unit was positive in this batch.

    ``amax > 0`` costs a third of a boolean ``(out > 0).any(dims)`` reduction and gives the same mask.
    """
    return unit_peaks(out) > 0


def saturated_count(out: Tensor, center: float, half_width: float) -> Tensor:
    """Number of elements with ``|out - center| > half_width`` as a float32 0-d tensor.

    Uses ``sum(sign(|x - c| - h)) = saturated - unsaturated`` (float math, no boolean reduction, which
    is several times slower on CPU). Elements exactly on the threshold count half, and so do NaN elements
    (``sign(nan)`` is 0); the non-finite count reports those.
    """
    x = out.detach()
    n = x.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    d = (x - center).abs_() if center else x.abs()
    s = torch.sign(d.sub_(half_width)).sum(dtype=torch.float32)
    return (s + n) * 0.5


__all__ = [
    "local_values",
    "readable_values",
    "squared_norms",
    "squared_norm_vector",
    "update_squared_norm_vectors",
    "device_groups",
    "nonfinite_count",
    "nonfinite_float_count",
    "difference_squared_norms",
    "update_squared_norms",
    "unit_dims",
    "unit_axis",
    "unit_peaks",
    "alive_units",
    "saturated_count",
]

"""Scratch copies of the weights for exact update norms: ``||w_after - w_before||`` across one optimizer step.

The copy lives from the sampled optimizer step's pre-hook to its post-hook. On CPU the buffers are kept
for the next sampled step: a fresh multi-megabyte allocation is served by ``mmap`` and pays a page fault
per 4 KiB page on first touch (2-4x the copy itself, measured), while refilling a kept buffer runs at
memory bandwidth. On accelerators the caching allocator already recycles blocks, so nothing is kept.
Either way the agent never holds more than one copy of the slice of weights it measures (at most
``update_copy_max_bytes`` plus the largest single tensor).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .stats import readable_values

_Key = tuple[torch.Size, tuple[int, ...], torch.dtype, torch.device]


class WeightCopies:
    """Hands out scratch copies of tensors; reuses kept CPU buffers of the same shape, strides, dtype and device.

    A copy has its source's strides (a channels-last weight gets a channels-last copy), so that weights and
    copy pair up element by element in one linear read (stats.update_squared_norm_vectors)."""

    def __init__(self) -> None:
        self._kept: dict[_Key, list[Tensor]] = {}

    @property
    def kept_bytes(self) -> int:
        """Bytes held between sampled steps (CPU buffers waiting to be refilled)."""
        return sum(b.numel() * b.element_size() for bufs in self._kept.values() for b in bufs)

    def copy(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Copies of ``tensors`` (the locally held values of each); overwrites the buffers of the last call."""
        srcs = readable_values(tensors)
        pool, self._kept = self._kept, {}
        dsts: list[Tensor] = []
        for src in srcs:
            key = (src.shape, src.stride(), src.dtype, src.device)
            free = pool.get(key)
            buf = free.pop() if free else torch.empty_like(src)  # preserve_format: the same strides when dense
            if src.device.type == "cpu":
                self._kept.setdefault(key, []).append(buf)
            dsts.append(buf)
        # Buffers left in ``pool`` belonged to layers no longer measured: dropping them frees the memory.
        if dsts:
            torch._foreach_copy_(dsts, srcs)
        return dsts

    def clear(self) -> None:
        """Release every kept buffer (on close)."""
        self._kept = {}


__all__ = ["WeightCopies"]

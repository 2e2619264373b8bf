"""One batched device-to-host copy per sampled step: collect device scalars, fetch them all at once."""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Sequence

import torch
from torch import Tensor


class DeviceBatch:
    """Collects 0-d/1-d device tensors under keys; ``fetch()`` returns host floats with one copy per device."""

    def __init__(self) -> None:
        self._items: list[tuple[Hashable, Tensor]] = []
        self._groups: list[tuple[Sequence[Hashable], Tensor]] = []
        self._count = 0

    def add(self, key: Hashable, value: Tensor | float | int) -> None:
        """Queue a value; a Python number is passed through without touching a device."""
        self._items.append((key, value))  # type: ignore[arg-type]
        self._count += 1

    def add_vector(self, keys: Sequence[Hashable], vector: Tensor) -> None:
        """Queue a 1-D tensor holding one value per key (e.g. ``stats.squared_norm_vector``)."""
        if vector.ndim != 1 or vector.numel() != len(keys):
            raise ValueError(f"add_vector needs a 1-D tensor with one value per key, got shape {tuple(vector.shape)} "
                             f"for {len(keys)} keys")
        if keys:
            self._groups.append((keys, vector))
            self._count += len(keys)

    def __len__(self) -> int:
        return self._count

    def fetch(self) -> dict[Hashable, float | list[float]]:
        """Copy everything to the host: one ``.cpu()`` per device (the only host-device sync of a sample)."""
        result: dict[Hashable, float | list[float]] = {}
        by_device: dict[torch.device, list[tuple[Hashable, Tensor]]] = defaultdict(list)
        groups: dict[torch.device, list[tuple[Sequence[Hashable], Tensor]]] = defaultdict(list)
        for key, value in self._items:
            if isinstance(value, Tensor):
                by_device[value.device].append((key, value))
            else:
                result[key] = float(value)
        for keys, vector in self._groups:
            groups[vector.device].append((keys, vector))
        for device in dict.fromkeys([*by_device, *groups]):
            dtype = torch.float32 if device.type == "mps" else torch.float64
            # 0-d values of one dtype go through one stack: a few ops per sample instead of two per value.
            layout: list[tuple[Sequence[Hashable] | Hashable, int, bool]] = []  # (key or keys, length, is a group)
            parts: list[Tensor] = []
            by_dtype: dict[torch.dtype, list[tuple[Hashable, Tensor]]] = defaultdict(list)
            items = by_device.get(device, [])
            for key, value in items:
                if value.ndim == 0:
                    by_dtype[value.dtype].append((key, value))
            for group in by_dtype.values():
                layout.append(([k for k, _ in group], len(group), True))
                parts.append(torch.stack([v for _, v in group]).to(dtype))
            for key, value in items:
                if value.ndim != 0:
                    layout.append((key, value.numel(), False))
                    parts.append(value.reshape(-1).to(dtype))
            for keys, vector in groups.get(device, []):
                layout.append((keys, len(keys), True))
                parts.append(vector.to(dtype))
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            host = flat.cpu().tolist()  # host-device sync: once per device per sampled step
            pos = 0
            for key, n, many in layout:
                if many:
                    result.update(zip(key, host[pos : pos + n]))  # type: ignore[arg-type]
                else:
                    result[key] = host[pos : pos + n]
                pos += n
        self._items = []
        self._groups = []
        self._count = 0
        return result

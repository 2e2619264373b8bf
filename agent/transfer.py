"""One batched device-to-host copy per sampled step: collect device scalars, fetch them all at once."""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable

import torch
from torch import Tensor


class DeviceBatch:
    """Collects 0-d/1-d device tensors under keys; ``fetch()`` returns host floats with one copy per device."""

    def __init__(self) -> None:
        self._items: list[tuple[Hashable, Tensor]] = []

    def add(self, key: Hashable, value: Tensor | float | int) -> None:
        """Queue a value; a Python number is passed through without touching a device."""
        self._items.append((key, value))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._items)

    def fetch(self) -> dict[Hashable, float | list[float]]:
        """Copy everything to the host: one ``.cpu()`` per device (the only host-device sync of a sample)."""
        result: dict[Hashable, float | list[float]] = {}
        by_device: dict[torch.device, list[tuple[Hashable, Tensor]]] = defaultdict(list)
        for key, value in self._items:
            if isinstance(value, Tensor):
                by_device[value.device].append((key, value))
            else:
                result[key] = float(value)
        for device, items in by_device.items():
            dtype = torch.float32 if device.type == "mps" else torch.float64
            # 0-d values of one dtype go through one stack: a few ops per sample instead of two per value.
            order: list[tuple[Hashable, Tensor]] = []
            parts: list[Tensor] = []
            by_dtype: dict[torch.dtype, list[tuple[Hashable, Tensor]]] = defaultdict(list)
            for key, value in items:
                if value.ndim == 0:
                    by_dtype[value.dtype].append((key, value))
            for group in by_dtype.values():
                order.extend(group)
                parts.append(torch.stack([v.detach() for _, v in group]).to(dtype))
            for key, value in items:
                if value.ndim != 0:
                    order.append((key, value))
                    parts.append(value.detach().reshape(-1).to(dtype))
            items = order
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            host = flat.cpu().tolist()  # host-device sync: once per device per sampled step
            pos = 0
            for key, value in items:
                n = value.numel()
                result[key] = host[pos] if value.ndim == 0 else host[pos : pos + n]
                pos += n
        self._items = []
        return result

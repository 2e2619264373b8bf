"""Memory readings: CUDA caching allocator (torch.cuda), device memory (NVML) and host RSS (psutil).

All readings are host calls: the allocator keeps its counters on the host, so none of them syncs the
device. NVML is optional: missing library or driver is logged once and the readings are skipped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psutil
import torch

from ..snapshot import MemoryStats

log = logging.getLogger("nnwatch")


class MemoryReader:
    """Reads memory at the step boundary (``read``) and device totals at scrape time (``nvml``)."""

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        self._cuda = torch.cuda.is_available()
        self._nvml: Any = None
        self._nvml_handles: dict[str, Any] = {}
        self._nvml_failed = False

    def read(self) -> MemoryStats:
        """Host RSS and, on CUDA, allocated/reserved/peak bytes per device."""
        rss = float(self._process.memory_info().rss)
        alloc: dict[str, float] = {}
        reserved: dict[str, float] = {}
        peak: dict[str, float] = {}
        if self._cuda and torch.cuda.is_initialized():
            for i in range(torch.cuda.device_count()):
                dev = str(i)
                alloc[dev] = float(torch.cuda.memory_allocated(i))
                reserved[dev] = float(torch.cuda.memory_reserved(i))
                peak[dev] = float(torch.cuda.max_memory_allocated(i))
        return MemoryStats(host_rss=rss, cuda_allocated=alloc, cuda_reserved=reserved, cuda_peak=peak)

    def nvml(self) -> dict[str, tuple[float, float]]:
        """{device index: (used bytes, total bytes)} from NVML; empty when NVML is not available."""
        if self._nvml_failed or not self._cuda:
            return {}
        try:
            if self._nvml is None:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                indices = [int(x) for x in visible.split(",") if x.strip().isdigit()] if visible else None
                for local in range(torch.cuda.device_count()):
                    physical = indices[local] if indices and local < len(indices) else local
                    self._nvml_handles[str(local)] = pynvml.nvmlDeviceGetHandleByIndex(physical)
            out = {}
            for dev, handle in self._nvml_handles.items():
                info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                out[dev] = (float(info.used), float(info.total))
            return out
        except Exception as exc:  # noqa: BLE001 - no NVML is a normal state
            self._nvml_failed = True
            log.info("nnwatch: NVML not available (%s); GPU used/total memory not exported", exc)
            return {}

"""Learnable synthetic tasks for the setup tests: labels come from a fixed teacher, so a healthy run's
loss really falls and no check has a reason to fire."""

from __future__ import annotations

import torch
from torch import Tensor


class Teacher:
    """``y = argmax(x @ W)`` for a random W fixed by ``task``; batches are deterministic per ``seed``."""

    def __init__(self, d_in: int = 16, classes: int = 4, seed: int = 0, task: int = 0) -> None:
        g = torch.Generator().manual_seed(1000 + task)
        self.w = torch.randn(d_in, classes, generator=g)
        self.g = torch.Generator().manual_seed(seed)
        self.d_in = d_in

    def batch(self, n: int = 64) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, self.d_in, generator=self.g)
        return x, (x @ self.w).argmax(1)


def finding_checks(monitor) -> list[str]:
    """Names of the findings currently firing (for assertion messages)."""
    return [f"{f.check}:{f.module}" for f in monitor.findings]

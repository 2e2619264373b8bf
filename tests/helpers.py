"""Test helpers: deterministic tiny models and training loops, binary lookup that fails in CI."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    """Path of an installed binary; skips outside CI, fails in CI (a missing binary is a CI failure)."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; .ci/run must install it (make system-deps)")
        pytest.skip(f"{name} not installed")
    return path


def require_module(name: str):
    """Import an optional test dependency; skips outside CI, fails in CI (requirements-test.txt installs it)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"{name} is not importable ({exc}); requirements-test.txt must install it")
        pytest.skip(f"{name} not installed", allow_module_level=True)


class SmallMLP(nn.Module):
    """An MLP whose activations are functional (no activation modules), like many real models."""

    def __init__(self, d_in: int = 16, hidden: int = 32, d_out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(F.relu(self.fc1(x)))))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, *, monitor=None, seed: int = 0,
          d_in: int = 16, classes: int = 4, batch: int = 32) -> list[float]:
    """Plain loop over synthetic data; returns the losses (read after the step, as a user would)."""
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(batch, d_in, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if monitor is not None:
            monitor.log(loss=loss)
        losses.append(loss.item())
    return losses



"""Gradient norms are read before clipping; the clip factor and the clipped share are reported."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry, generate_latest
from torch import nn

import agent
from agent.collect.clipping import judge
from agent.export.collector import NNWatchCollector


def _setup(lr: float = 0.01):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 1))
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def _batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(k)
    return torch.randn(32, 10, generator=g), 100 * torch.randn(32, 1, generator=g)


def test_norms_are_read_before_clip_grad_norm_and_the_clip_is_counted() -> None:
    model, opt = _setup()
    monitor = agent.attach(model, opt, port=None, sample_every=1)
    for k in range(6):
        x, y = _batch(k)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0))
        opt.step()
        snap = monitor.snapshot
        assert snap is not None and snap.step == k
        assert snap.grad_norm == pytest.approx(total, rel=1e-4)  # what clip_grad_norm_ saw, not 1.0
        assert snap.grad_clip_factor == pytest.approx(1.0 / total, rel=1e-3)
    assert monitor.snapshot.grad_clipped_fraction == 1.0
    registry = CollectorRegistry()
    registry.register(NNWatchCollector(monitor))
    text = generate_latest(registry).decode()
    assert "nnwatch_gradient_clipped_ratio 1.0" in text
    assert "nnwatch_gradient_clip_factor " in text
    monitor.close()


def test_unclipped_gradients_keep_factor_one() -> None:
    model, opt = _setup()
    monitor = agent.attach(model, opt, port=None, sample_every=1)
    for k in range(3):
        x, y = _batch(k)
        opt.zero_grad()
        F.mse_loss(model(x), y / 100).backward()
        expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e6)  # a limit never reached
        opt.step()
        assert monitor.snapshot.grad_norm == pytest.approx(expected, rel=1e-4)
        assert monitor.snapshot.grad_clip_factor == pytest.approx(1.0, abs=1e-4)
    assert monitor.snapshot.grad_clipped_fraction == 0.0
    monitor.close()


def test_accumulated_gradients_are_read_after_the_last_backward() -> None:
    model, opt = _setup()
    monitor = agent.attach(model, opt, port=None, sample_every=1)
    opt.zero_grad()
    for k in range(3):  # three micro-batches, one step
        x, y = _batch(k)
        F.mse_loss(model(x), y).backward()
    total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5))
    opt.step()
    assert monitor.snapshot.grad_norm == pytest.approx(total, rel=1e-4)
    monitor.close()


@pytest.mark.parametrize("watched", [True, False])
def test_a_grad_scaler_is_not_mistaken_for_clipping(watched: bool) -> None:
    model, opt = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    monitor = agent.attach(model, opt, port=None, sample_every=1)
    if watched:
        monitor.watch_scaler(scaler)
    for k in range(3):
        x, y = _batch(k)
        opt.zero_grad()
        scaler.scale(F.mse_loss(model(x), y / 100)).backward()
        scaler.unscale_(opt)
        expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        scaler.step(opt)
        scaler.update()
        assert monitor.snapshot.grad_norm == pytest.approx(expected, rel=1e-4)  # unscaled, as the step saw
        assert monitor.snapshot.grad_clip_factor == pytest.approx(1.0, abs=1e-4)
    assert monitor.snapshot.grad_clipped_fraction == 0.0
    monitor.close()


def test_a_watched_grad_scaler_with_clipping_reports_the_unscaled_pre_clip_norm() -> None:
    model, opt = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    monitor = agent.attach(model, opt, port=None, sample_every=1)
    monitor.watch_scaler(scaler)
    for k in range(3):
        x, y = _batch(k)
        opt.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        scaler.unscale_(opt)
        total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0))
        scaler.step(opt)
        scaler.update()
        assert monitor.snapshot.grad_norm == pytest.approx(total, rel=1e-3)
        assert monitor.snapshot.grad_clip_factor == pytest.approx(1.0 / total, rel=1e-3)
    monitor.close()


def test_judge_tells_clipping_from_scaling() -> None:
    assert not judge(4.0 * 2.0**20, 4.0, None, False).clipped  # 2^-10 exactly: an unwatched scaler unscaled
    assert judge(4.1 * 2.0**20, 4.0, None, False).clipped  # not a power of two: clipped
    clipped = judge(9.0, 1.0, None, False)
    assert clipped.clipped and clipped.factor == pytest.approx(1 / 3)
    assert judge(9.0, 1.0, None, True) is None  # fp16 autocast, unknown scale: no verdict
    assert judge(9.0 * 2.0**16, 1.0, 2.0**8, False).clipped  # scale 256 divided out, then clipped to 1/3
    assert not judge(1.0, 1.2, None, False).clipped  # grown (a manual all-reduce): not clipping
    assert judge(float("nan"), 1.0, None, False) is None
    assert judge(0.0, 0.0, None, False) is None

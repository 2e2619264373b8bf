"""Mixed precision: GradScaler-skipped steps are expected, a collapsing loss scale is not; bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry
from torch import nn

import agent
from agent.export.collector import NNWatchCollector
from tests.setups.tasks import Teacher, finding_checks


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _run(steps: int, poison: set[int] | None = None, *, init_scale: float = 2.0**8, fp16: bool = False,
         sample_every: int = 1):
    """Train with a CPU GradScaler; on the ``poison`` steps the loss is multiplied by inf (an overflow)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    monitor = agent.attach(model, opt, port=None, sample_every=sample_every)
    monitor.watch_scaler(scaler)
    task = Teacher()
    snaps = []
    for step in range(steps):
        x, y = task.batch()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        if poison and step in poison:
            loss = loss * math.inf
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        monitor.log(loss=loss)
        snaps.append(monitor.snapshot)
    return monitor, scaler, snaps


def test_skipped_steps_count_as_steps_and_raise_nothing():
    monitor, scaler, snaps = _run(30, poison={4, 11, 12})
    try:
        assert monitor.amp.skipped_total == 3
        assert monitor.step_index == 30  # skipped steps still end a step
        skipped = [s for s in snaps if s.amp_skipped]
        assert {s.step for s in skipped} == {4, 5, 11, 12, 13}  # and the sample after, holding its loss
        # The overflow was seen (non-finite gradients and loss on those samples) and excused.
        assert all(s.nonfinite("gradient") > 0 for s in skipped if s.step in (4, 11, 12))
        assert all(s.nonfinite("gradient") == 0 for s in snaps if s.step not in (4, 11, 12))
        assert finding_checks(monitor) == []
        assert monitor.engine.raised == {}
        assert not monitor.guard.errors
        reg = CollectorRegistry(auto_describe=False)
        reg.register(NNWatchCollector(monitor, extra_labels={}))
        assert reg.get_sample_value("nnwatch_amp_skipped_steps_total") == 3
        assert reg.get_sample_value("nnwatch_amp_consecutive_skipped_steps") == 0
        assert reg.get_sample_value("nnwatch_amp_loss_scale") == scaler.get_scale() == 2.0**8 / 8
    finally:
        monitor.close()
    assert "step" not in scaler.__dict__  # close() gave the scaler its own step() back


def test_collapsing_loss_scale_raises_nonfinite_values():
    # From step 5 on every step overflows: the scale halves each step and nothing is ever applied.
    monitor, scaler, snaps = _run(5 + 25, poison=set(range(5, 30)))
    try:
        threshold = int(agent.checks.catalogue.BY_NAME["nonfinite_values"].thresholds["amp_skipped_steps"])
        assert monitor.amp.consecutive_skips == 25
        findings = [f for f in monitor.findings if f.check == "nonfinite_values"]
        assert len(findings) == 1, finding_checks(monitor)
        # It fired on the sample where the run of skips reached the threshold, not before.
        assert findings[0].step == 5 + threshold - 1
        assert "GradScaler" in findings[0].message
        assert scaler.get_scale() < 1e-3
    finally:
        monitor.close()


def test_fp16_autocast_with_a_high_initial_scale_skips_a_few_steps_silently():
    # A real fp16 overflow: 2^24 overflows fp16 gradients until the scaler has backed off.
    monitor, scaler, _ = _run(30, init_scale=2.0**24, fp16=True, sample_every=2)
    try:
        assert 1 <= monitor.amp.skipped_total < 20
        assert monitor.amp.consecutive_skips == 0
        assert "nonfinite_values" not in finding_checks(monitor)
        assert not monitor.guard.errors
    finally:
        monitor.close()


def test_bf16_autocast_signals():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    task = Teacher()
    with agent.attach(model, opt, port=None, sample_every=2, num_classes=4) as monitor:
        for _ in range(40):
            x, y = task.batch()
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            monitor.log(loss=loss)
        snap = monitor.snapshot
        assert not monitor.guard.errors
        assert monitor.findings == []
        assert [a.kind for a in snap.activations] == ["relu"]  # bf16 activations observed
        assert all(l.grad_norm and math.isfinite(l.grad_norm) for l in snap.layers)
        assert snap.update_ratio is not None and 1e-5 < snap.update_ratio < 0.1
        assert snap.loss < monitor.first_loss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_grad_scaler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**24)
    task = Teacher()
    with agent.attach(model, opt, port=None, sample_every=2) as monitor:
        monitor.watch_scaler(scaler)
        for _ in range(30):
            x, y = task.batch()
            x, y = x.cuda(), y.cuda()
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            monitor.log(loss=loss)
        assert monitor.amp.skipped_total >= 1
        assert "nonfinite_values" not in finding_checks(monitor)
        assert monitor.amp.scale == scaler.get_scale()

"""agent.export.tensorboard: the history's scalars in TensorBoard event files, read back with TensorBoard's reader."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import agent
from tests.helpers import require_module


def test_training_writes_the_scalars_tensorboard_reads_back(tmp_path):
    require_module("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = agent.attach(model, opt, port=None, native=False, sample_every=3, tensorboard_dir=str(tmp_path / "tb"))
    snaps = []
    for _ in range(30):
        loss = model(torch.randn(32, 8)).pow(2).mean()  # 10 samples x 32 rows: a dead-unit verdict (256 positions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        if mon.snapshot is not None and (not snaps or snaps[-1] is not mon.snapshot):
            snaps.append(mon.snapshot)
    mon.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "lr/group0", "grad_norm/global", "update_ratio/global", "grad_norm/0", "grad_norm/2",
            "update_ratio/4", "dead_fraction/1", "saturated_fraction/3", "memory/host_rss_bytes"} <= tags
    by_step = {s.step: s for s in snaps}

    def values(tag):
        return {e.step: e.value for e in acc.Scalars(tag)}

    losses, grads = values("loss/train"), values("grad_norm/2")
    assert set(losses) == {s.step for s in snaps if s.loss is not None} and len(losses) >= 5
    for step, v in losses.items():
        assert v == pytest.approx(by_step[step].loss, rel=1e-6)  # float32 in the event file
    for step, v in grads.items():
        assert v == pytest.approx(next(l.grad_norm for l in by_step[step].layers if l.module == "2"), rel=1e-6)
    lrs = values("lr/group0")
    assert set(lrs) == set(by_step) and list(lrs.values()) == [pytest.approx(0.05)] * len(lrs)


def test_tensorboard_dir_without_tensorboard_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="pip install tensorboard"):
        agent.attach(model, port=None, tensorboard_dir=str(tmp_path))
    assert not model._forward_hooks

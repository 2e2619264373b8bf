"""Resume from a checkpoint: the step counter continues and checks do not false-fire across the restart."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry
from torch import nn

import agent
from agent.export.collector import NNWatchCollector
from tests.setups.tasks import Teacher, finding_checks


def _fresh():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model, opt, monitor, steps, task):
    for _ in range(steps):
        x, y = task.batch()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        monitor.log(loss=loss)


def _restart(path, *, load_monitor: bool):
    """A new process: fresh model, optimizer and monitor, loaded from the checkpoint file."""
    model, opt = _fresh()
    ckpt = torch.load(path)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    monitor = agent.attach(model, opt, port=None, sample_every=2, num_classes=4)
    if load_monitor:
        monitor.load_state_dict(ckpt["nnwatch"])
    return model, opt, monitor


def test_resume_continues_the_step_and_stays_quiet(tmp_path):
    task = Teacher()
    model, opt = _fresh()
    with agent.attach(model, opt, port=None, sample_every=2, num_classes=4) as monitor:
        _train(model, opt, monitor, 120, task)
        assert monitor.findings == []
        state = monitor.state_dict()
        first_loss = monitor.first_loss
        resumed_loss = monitor.snapshot.loss
    assert json.loads(json.dumps(state)) == state  # plain JSON: fits any checkpoint format
    assert resumed_loss < 0.5 * math.log(4)  # trained far below the loss at init
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "nnwatch": state}, path)

    # Control: without the monitor's state the restarted job takes its resumed loss for a bad init.
    m2, o2, control = _restart(path, load_monitor=False)
    with control:
        _train(m2, o2, control, 30, Teacher(seed=1))
        assert "loss_at_init:None" in finding_checks(control)
        assert control.step_index == 30

    m3, o3, monitor = _restart(path, load_monitor=True)
    with monitor:
        assert monitor.step_index == 120
        _train(m3, o3, monitor, 30, Teacher(seed=1))
        assert monitor.step_index == 150
        assert monitor.snapshot.step == 148  # samples stay on the same steps (every 2nd)
        assert monitor.first_loss == first_loss
        assert finding_checks(monitor) == []
        assert monitor.engine.raised == {}
        steps = [st for st, _ in monitor.engine.losses]
        assert steps[0] == 2 and steps[-1] == 148 and len(steps) == 59 + 14  # the loss history continues
        reg = CollectorRegistry(auto_describe=False)
        reg.register(NNWatchCollector(monitor, extra_labels={}))
        assert reg.get_sample_value("nnwatch_step") == 150
        assert reg.get_sample_value("nnwatch_steps_total") == 30  # this process's own counter
        assert reg.get_sample_value("nnwatch_initial_loss") == first_loss


def test_load_rejects_foreign_state():
    model, opt = _fresh()
    with agent.attach(model, opt, port=None) as monitor:
        for bad in ({}, {"step": 1, "version": 99}):
            try:
                monitor.load_state_dict(bad)
            except ValueError as exc:
                assert "state" in str(exc)
            else:
                raise AssertionError(f"accepted {bad}")

"""torch.compile: the agent adds no graph break, whichever order attach and compile come in; optimizer-side
signals survive, forward-side ones (activations) are off while the forward runs compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agent
from tests.setups.tasks import Teacher

import torch._dynamo as dynamo
from torch._dynamo.utils import counters


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(forward, model, monitor, opt, steps=8):
    task = Teacher()
    for _ in range(steps):
        x, y = task.batch(32)
        opt.zero_grad()
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        monitor.log(loss=loss)


def _eager_reference():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with agent.attach(model, opt, port=None, sample_every=2) as monitor:
        _train(model, model, monitor, opt)
        return monitor.snapshot


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


def test_compile_then_attach_inductor():
    reference = _eager_reference()
    model = _model()
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with agent.attach(compiled, opt, port=None, sample_every=2) as monitor:
        _train(compiled, model, monitor, opt)
        snap = monitor.snapshot
        assert monitor.compiled
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
        assert counters["stats"]["unique_graphs"] == 1
        # Layer names from the original module (no "_orig_mod." prefix); same numbers as eager.
        assert [l.module for l in snap.layers] == [l.module for l in reference.layers] == ["0", "2"]
        assert [l.grad_norm for l in snap.layers] == pytest.approx([l.grad_norm for l in reference.layers], rel=1e-4)
        assert snap.update_ratio == pytest.approx(reference.update_ratio, rel=1e-4)
        assert snap.loss == pytest.approx(reference.loss, rel=1e-4)
        assert monitor.steps.samples_total == 8 * 32  # the wrapper's hooks run eagerly, outside the graph
        assert snap.activations == () and reference.activations  # activation probes are off when compiled
        assert not monitor.guard.errors and monitor.findings == []


@pytest.mark.parametrize("how", ["torch.compile", "Module.compile"])
def test_attach_then_compile_adds_no_graph_break(how):
    reference = _eager_reference()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with agent.attach(model, opt, port=None, sample_every=2) as monitor:
        if how == "Module.compile":
            model.compile(backend="aot_eager")
            forward = model
        else:
            forward = torch.compile(model, backend="aot_eager")
        _train(forward, model, monitor, opt)
        snap = monitor.snapshot
        # The hooks on the compiled module return at once while dynamo traces them.
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
        assert counters["stats"]["unique_graphs"] == 1
        assert monitor.step_index == 8
        assert [l.grad_norm for l in snap.layers] == pytest.approx([l.grad_norm for l in reference.layers], rel=1e-4)
        assert snap.update_ratio == pytest.approx(reference.update_ratio, rel=1e-4)
        assert snap.activations == ()
        assert not monitor.guard.errors

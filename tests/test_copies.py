"""A watched model stays an ordinary model: it pickles, deep-copies, saves whole and averages (EMA/SWA), and a
copy of it is an unwatched model whose steps the monitor never sees (agent.collect.weakhook)."""

from __future__ import annotations

import copy
import gc
import io
import pickle
import subprocess
import sys
import weakref

import pytest
import torch
from torch import nn

import agent
from agent.collect.weakhook import UNWATCHED, WeakHook


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 6, generator=g)), torch.randint(0, 3, (8,), generator=g)).backward()
        opt.step()


def _torch_save_and_load(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)  # the whole module, as the PyTorch word language model example does
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "deepcopy": copy.deepcopy,
    "torch.save": _torch_save_and_load,
    "AveragedModel": lambda m: torch.optim.swa_utils.AveragedModel(m).module,
}


@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_of_a_watched_model_is_an_unwatched_model(how):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with agent.attach(model, opt, port=None, native=False, sample_every=1, overhead_budget=None) as mon:
        _train(model, opt, 3)
        clone = COPIES[how](model)
        assert all(h is UNWATCHED or isinstance(h, type(UNWATCHED)) for h in clone._forward_hooks.values())
        clone_opt = torch.optim.SGD(clone.parameters(), lr=0.1)
        before = (mon.step_index, mon.steps.forwards)
        _train(clone, clone_opt, 4)  # the copy trains like any model ...
        assert (mon.step_index, mon.steps.forwards) == before  # ... and the monitor does not see it
        for a, b in zip(model.state_dict().values(), clone.state_dict().values()):
            assert a.shape == b.shape
        _train(model, opt, 2)  # the original is still watched
        assert mon.step_index == before[0] + 2
        torch.save(model.state_dict(), io.BytesIO())
    assert not model._forward_hooks and not model._forward_pre_hooks  # close() removed every hook


def test_copies_hold_no_monitor_and_the_monitor_is_freed():
    model = _model()
    mon = agent.attach(model, port=None, native=False)
    blob = pickle.dumps(model)
    assert b"nnwatch" in blob and b"agent" not in blob  # only the stdlib no-op: loads where nnwatch is not installed
    ref = weakref.ref(mon)
    clone = copy.deepcopy(model)
    mon.close()
    del mon
    gc.collect()
    assert ref() is None  # neither the model's hooks nor the copy keep the monitor alive
    assert clone(torch.randn(2, 6)).shape == (2, 3)


def test_a_pickled_watched_model_loads_in_a_process_without_nnwatch():
    model = _model()
    mon = agent.attach(model, port=None, native=False)
    buf = io.BytesIO()
    torch.save(model, buf)
    mon.close()
    code = ("import io, sys; sys.modules['agent'] = None; import torch; "
            "m = torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False); print(tuple(m(torch.zeros(1, 6)).shape))")
    run = subprocess.run([sys.executable, "-c", code], input=buf.getvalue(), capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().strip() == "(1, 3)"


def test_a_weak_hook_does_nothing_once_its_owner_is_gone():
    class Owner:
        def hit(self, *args):
            return args

    owner = Owner()
    hook = WeakHook(owner, "hit")
    assert hook(1, 2) == (1, 2)
    del owner
    gc.collect()
    assert hook(1, 2) is None
    assert copy.copy(hook) is UNWATCHED and UNWATCHED(1, 2, 3) is None


def test_jit_trace_of_a_watched_model_records_only_the_model():
    model = _model()
    with agent.attach(model, port=None, native=False, sample_every=1, overhead_budget=None):
        traced = torch.jit.trace(model, torch.randn(2, 6))  # the probe must not leak its ops into the graph
    x = torch.randn(4, 6)
    torch.testing.assert_close(traced(x), model(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_jit_script_of_a_watched_model_and_of_its_copy_compiles_without_the_hooks():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with agent.attach(model, opt, port=None, native=False, sample_every=1, overhead_budget=None) as monitor:
        before = {k: list(v) for k, v in (("post", model._forward_hooks), ("pre", model._forward_pre_hooks))}
        scripted = torch.jit.script(model)
        copied = torch.jit.script(copy.deepcopy(model))  # a copy carries no-op hooks: compiles the same way
        assert {k: list(v) for k, v in (("post", model._forward_hooks), ("pre", model._forward_pre_hooks))} == before
        x = torch.randn(4, 6)
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(copied(x), model(x))
        for _ in range(3):  # still watched after scripting
            opt.zero_grad()
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
        assert monitor.snapshot is not None and monitor.snapshot.step >= 2


def test_torch_jit_script_is_restored_when_the_last_monitor_closes(monkeypatch):
    from agent.collect import scripting

    monkeypatch.setattr(scripting, "_owners", set())  # monitors other tests left open do not count here
    monkeypatch.setattr(scripting, "_original", None)
    monkeypatch.setattr(torch.jit, "script", getattr(torch.jit.script, "__nnwatch_original__", torch.jit.script))
    original = torch.jit.script
    a, b = object(), object()
    scripting.acquire(a)
    scripting.acquire(b)
    wrapped = torch.jit.script
    assert getattr(wrapped, "__nnwatch_original__", None) is not None
    scripting.release(a)
    assert torch.jit.script is wrapped  # b still open
    scripting.release(b)
    assert torch.jit.script is original

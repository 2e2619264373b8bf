"""A KeyboardInterrupt (any BaseException) inside a sampled forward leaves no probe behind: torch skips
``always_call`` forward hooks for BaseExceptions, so the probe notices its forward is gone (agent.collect.probes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

import agent


class Interruptible(nn.Module):
    """A layer whose forward raises ``exc`` when armed, as a Ctrl-C arriving in the middle of a forward does."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 12)
        self.exc: BaseException | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.lin(x))
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc
        return h


def _watched() -> tuple[nn.Module, Interruptible]:
    torch.manual_seed(0)
    layer = Interruptible()
    return nn.Sequential(layer, nn.Tanh(), nn.Linear(12, 2)), layer


def _agent_left_nothing() -> None:
    assert torch._C._len_torch_function_stack() == 0
    assert not torch_module._global_forward_hooks and not torch_module._global_forward_pre_hooks


def _sites_of(mon: agent.Monitor) -> set[str]:
    return set(mon.probe.sites) | set(mon.probe.dropped_sites)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)], ids=["KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize("rounds", [1, 40], ids=["mode", "module_hooks"])  # later samples hook modules instead
def test_an_interrupted_sampled_forward_leaves_nothing_behind(exc, rounds):
    model, layer = _watched()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, native=False, sample_every=1, overhead_budget=None, checks=False)
    try:
        for _ in range(rounds):
            opt.zero_grad()
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
        sites = _sites_of(mon)
        layer.exc = exc
        with pytest.raises(type(exc)):
            model(torch.randn(4, 6))  # a sampled training forward, left by a BaseException
        # An unrelated evaluation afterwards: not observed, and it removes what torch left installed.
        other = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Sigmoid())
        with torch.no_grad():
            other(torch.randn(3, 6))
            torch.relu(torch.randn(3))
        _agent_left_nothing()
        assert not mon.probe.active
        assert _sites_of(mon) <= sites | {"0"}  # nothing named after the other model's modules
        forwards = mon.steps.forwards
        with torch.no_grad():
            other(torch.randn(3, 6))
        assert mon.steps.forwards == forwards
        # Training goes on and is watched as before.
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
        _agent_left_nothing()
        assert mon.snapshot is not None and mon.snapshot.step == mon.step_index - 1
        assert {a.key for a in mon.snapshot.activations} >= {"0:relu", "1"}
    finally:
        mon.close()
    _agent_left_nothing()


def test_the_watched_model_cleans_up_at_its_next_forward_even_in_eval():
    model, layer = _watched()
    mon = agent.attach(model, port=None, native=False, sample_every=1, overhead_budget=None, checks=False)
    try:
        layer.exc = KeyboardInterrupt()
        with pytest.raises(KeyboardInterrupt):
            model(torch.randn(4, 6))
        model.eval()
        with torch.no_grad():
            model(torch.randn(2, 6))
        _agent_left_nothing()
    finally:
        mon.close()


def test_an_exception_still_ends_the_probe_at_once():
    model, layer = _watched()
    mon = agent.attach(model, port=None, native=False, sample_every=1, overhead_budget=None, checks=False)
    try:
        layer.exc = RuntimeError("shape mismatch")
        with pytest.raises(RuntimeError):
            model(torch.randn(4, 6))
        _agent_left_nothing()  # the root's always_call hook ran: nothing waits for a later call
    finally:
        mon.close()

"""No host-device synchronisation outside sampled steps, at most one per sampled step.

On CPU nothing really synchronises, so the check counts every operation that would on an accelerator:
reading tensor values into Python (``item``, ``tolist``, ``bool``/``float``/``int``/``index``, ``numpy``)
and moving a tensor to the host (``cpu``). The training loop below does none of these itself (SGD, no
``loss.item()``), which the baseline test proves, so every counted call is the agent's. On CUDA the same
loop runs under ``torch.cuda.set_sync_debug_mode("error")`` on non-sampled steps.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agent

READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__array__")
"""Tensor methods that copy values to the host and block until the device has produced them."""
MOVES = ("cpu",)
"""Tensor methods that move a tensor to the host (a sync on an accelerator)."""


class Model(nn.Module):
    """Module and functional activations (ReLU module, tanh and GELU functional), a batch-norm layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 24)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(24, 24)
        self.norm = nn.BatchNorm1d(24)
        self.fc3 = nn.Linear(24, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = torch.tanh(self.norm(self.fc2(h)))
        return self.head(F.gelu(self.fc3(h)))


class SyncCounter:
    """Counts host reads and host moves of any tensor while ``counting`` is on."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.counting = False

    def wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def counted(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.counting:
                self.counts[name] += 1
            return original(t, *args, **kwargs)
        return counted

    def take(self) -> collections.Counter[str]:
        counts, self.counts = self.counts, collections.Counter()
        return counts


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncCounter]:
    counter = SyncCounter()
    for name in READS + MOVES:
        original = getattr(torch.Tensor, name, None)
        if original is not None:
            monkeypatch.setattr(torch.Tensor, name, counter.wrap(name, original))
    yield counter


def _batches(n: int, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 12, generator=g).to(device), torch.randint(0, 3, (16,), generator=g).to(device)) for _ in range(n)]


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor], monitor: Any) -> None:
    x, y = batch
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if monitor is not None:
        monitor.log(loss=loss)  # a tensor: logging must not read it


class Run:
    """A model, its optimizer and the attached monitor (kept referenced: the monitor holds them weakly)."""

    def __init__(self, **options: Any) -> None:
        torch.manual_seed(0)
        self.model = Model()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.monitor = agent.attach(self.model, self.opt, port=None, **options)
        self.data = _batches(4)
        self.k = 0

    def step(self, syncs: SyncCounter) -> tuple[collections.Counter[str], bool]:
        """One training step; the host reads/moves it made and whether the agent sampled it."""
        before = self.monitor.sampled_steps
        syncs.take()
        syncs.counting = True
        _step(self.model, self.opt, self.data[self.k % len(self.data)], self.monitor)
        syncs.counting = False
        self.k += 1
        return syncs.take(), self.monitor.sampled_steps > before


ONE_COPY = collections.Counter({"cpu": 1, "tolist": 1})
"""DeviceBatch.fetch: ``flat.cpu().tolist()``, one move to the host and one read of the moved tensor."""


def _assert_sync_budget(per_step: list[tuple[collections.Counter[str], bool]]) -> None:
    for k, (kinds, sampled) in enumerate(per_step):
        if sampled:
            assert kinds == ONE_COPY, f"step {k} (sampled): {dict(kinds)}; expected one batched copy"
        else:
            assert not kinds, f"step {k} (not sampled): host reads/moves {dict(kinds)}"


def test_the_plain_loop_itself_never_syncs(syncs):
    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    syncs.counting = True
    for batch in _batches(6):
        _step(model, opt, batch, None)
    syncs.counting = False
    assert sum(syncs.take().values()) == 0  # so every count below is the agent's


def test_the_counter_sees_a_sync():
    # A control: the instrumentation must catch what a careless hook would do.
    counter = SyncCounter()
    with pytest.MonkeyPatch.context() as mp:
        for name in READS + MOVES:
            mp.setattr(torch.Tensor, name, counter.wrap(name, getattr(torch.Tensor, name)))
        counter.counting = True
        t = torch.ones(3)
        t.sum().item()
        bool(t.any())
        float(t[0])
        t.cpu().tolist()
    assert counter.take() == {"item": 1, "__bool__": 1, "__float__": 1, "cpu": 1, "tolist": 1}


@pytest.mark.parametrize("every", [1, 4])
def test_no_sync_between_samples_and_one_batched_copy_per_sample(syncs, every):
    run = Run(sample_every=every, update_ratios=True, activations=True, checks=True)
    per_step = [run.step(syncs) for _ in range(3 * every + 2)]
    sampled = [s for _, s in per_step]
    assert sum(sampled) >= 3 and (every == 1 or sampled.count(False) >= 2 * (every - 1))
    _assert_sync_budget(per_step)
    snap = run.monitor.snapshot
    assert snap is not None and snap.activations and any(l.update_norm for l in snap.layers)  # the work was done
    run.monitor.close()


def test_logged_tensors_ride_along_in_the_same_copy(syncs):
    run = Run(sample_every=3)
    per_step = []
    for _ in range(7):
        run.monitor.log(val_loss=torch.tensor(0.5), accuracy=torch.tensor(0.9))
        per_step.append(run.step(syncs))
    _assert_sync_budget(per_step)
    assert run.monitor.logged.logged_values["accuracy"] == pytest.approx(0.9)
    assert run.monitor.val_history[-1][1] == pytest.approx(0.5)
    run.monitor.close()


def test_overhead_budget_keeps_the_sync_budget(syncs):
    run = Run(sample_every=2, overhead_budget=0.5)
    per_step = [run.step(syncs) for _ in range(30)]
    _assert_sync_budget(per_step)
    run.monitor.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sync_debug_mode_errors_on_no_step_between_samples():
    torch.manual_seed(0)
    model = Model().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = agent.attach(model, opt, port=None, sample_every=5)
    batches = _batches(16, "cuda")
    torch.cuda.synchronize()
    try:
        for batch in batches:
            # Non-sampled steps must run under "error"; a sampled step may do its one batched copy.
            torch.cuda.set_sync_debug_mode(0 if monitor._sampled else "error")
            _step(model, opt, batch, monitor)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert monitor.sampled_steps >= 3
    monitor.close()

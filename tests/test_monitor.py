"""Monitor lifecycle and signals: bitwise-identical training, hooks removed, GC, guarded probes, signals."""

from __future__ import annotations

import gc
import logging
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agent
from agent.snapshot import ROOT

from tests.helpers import SmallMLP, train


def make(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = SmallMLP(**kw)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_training_is_bitwise_identical_with_and_without_agent():
    model_a, opt_a = make()
    losses_a = train(model_a, opt_a, 25)
    model_b, opt_b = make()
    with agent.attach(model_b, opt_b, port=None, sample_every=1) as mon:
        losses_b = train(model_b, opt_b, 25, monitor=mon)
        assert mon.sampled_steps == 25
    assert losses_a == losses_b
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(torch.get_rng_state(), torch.get_rng_state())


def test_rng_state_untouched():
    model, opt = make()
    mon = agent.attach(model, opt, port=None, sample_every=1)
    x = torch.randn(8, 16)
    state = torch.get_rng_state()
    loss = model(x).sum()
    loss.backward()
    opt.step()
    assert torch.equal(state, torch.get_rng_state())
    mon.close()


def _hook_counts(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_forward_hooks_always_called", {}))
    n += len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    n += len(torch.nn.modules.module._global_forward_hooks) + len(torch.nn.modules.module._global_forward_pre_hooks)
    return n


def test_close_removes_every_hook_and_is_idempotent():
    model, opt = make()
    before = _hook_counts(model, opt)
    mon = agent.attach(model, opt, port=0, sample_every=1)
    url = mon.url
    assert url and url.startswith("http://127.0.0.1:")
    train(model, opt, 3, monitor=mon)
    assert _hook_counts(model, opt) > before
    mon.close()
    mon.close()
    assert _hook_counts(model, opt) == before == 0
    assert torch.overrides._get_current_function_mode_stack() == []
    # The port is released and the monitor stops collecting.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
    steps = mon.step_index
    train(model, opt, 2)
    assert mon.step_index == steps


def test_monitor_and_model_are_garbage_collected():
    model, opt = make()
    mon = agent.attach(model, opt, port=0, sample_every=1)
    train(model, opt, 3, monitor=mon)
    mon.close()
    refs = [weakref.ref(model), weakref.ref(mon), weakref.ref(opt)]
    del model, opt, mon
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_model_is_held_weakly_and_closes_monitor_when_collected():
    model, opt = make()
    mon = agent.attach(model, opt, port=0, sample_every=1)
    train(model, opt, 2, monitor=mon)
    model_ref = weakref.ref(model)
    del model, opt
    gc.collect()
    assert model_ref() is None
    assert mon._closed  # the finalizer closed it: no server left behind
    assert mon.url is None or mon.exporter._server is None


def test_raising_probe_does_not_stop_training_and_is_counted(monkeypatch, caplog):
    model, opt = make()
    mon = agent.attach(model, opt, port=None, sample_every=1)

    def boom(*a, **k):
        raise RuntimeError("probe bug")

    monkeypatch.setattr(mon.probe, "observe", boom)
    losses = train(model, opt, 6, monitor=mon)
    assert len(losses) == 6 and all(math.isfinite(l) for l in losses)
    assert mon.guard.errors["activations"] == 3  # disabled after 3 failures
    assert "activations" in mon.guard.disabled
    assert sum("probe 'activations' failed;" in r.getMessage() for r in caplog.records) == 1
    assert mon.snapshot is not None and mon.snapshot.layers  # the other probes kept working
    mon.close()


def test_raising_gradient_capture_is_guarded(monkeypatch):
    model, opt = make()
    mon = agent.attach(model, opt, port=None, sample_every=1)
    monkeypatch.setattr(agent.collect.stats, "squared_norm_vector", lambda *a: 1 / 0)
    train(model, opt, 4, monitor=mon)
    assert mon.guard.errors["gradients"] >= 1
    assert mon.step_index == 4
    mon.close()


def test_hooks_return_none_and_outputs_are_untouched():
    model, opt = make()
    x = torch.randn(4, 16)
    expected = model(x)
    with agent.attach(model, opt, port=None, sample_every=1):
        got = model(x)
    assert torch.equal(expected, got)


def test_layer_statistics_match_reference():
    model, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    snap = mon.snapshot
    by = {l.module: l for l in snap.layers}
    assert set(by) == {"fc1", "fc2", "head"}
    for layer in ("fc1", "fc2", "head"):
        names = [f"{layer}.weight", f"{layer}.bias"]
        g = math.sqrt(sum(float((grads[n].double() ** 2).sum()) for n in names))
        params = {k: v.detach() for k, v in model.named_parameters()}
        w = math.sqrt(sum(float((params[n].double() ** 2).sum()) for n in names))
        u = math.sqrt(sum(float(((params[n].double() - weights_before[n].double()) ** 2).sum()) for n in names))
        assert by[layer].grad_norm == pytest.approx(g, rel=1e-5)
        assert by[layer].weight_norm == pytest.approx(w, rel=1e-5)
        assert by[layer].update_norm == pytest.approx(u, rel=1e-4)
        assert by[layer].update_ratio == pytest.approx(u / w, rel=1e-4)
        assert by[layer].params == sum(dict(model.named_parameters())[n].numel() for n in names)
    total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    assert snap.grad_norm == pytest.approx(total, rel=1e-5)
    mon.close()


def test_functional_and_module_activations_are_measured_dead_vs_healthy():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 32)
            self.b = nn.Linear(32, 32)
            self.act = nn.ReLU()
            self.c = nn.Linear(32, 4)

        def forward(self, x):
            h = F.relu(self.a(x))          # functional, healthy
            h = self.act(self.b(h))        # module, made dead below
            return self.c(torch.tanh(h))   # functional tanh

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.b.bias.fill_(-100.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    train(model, opt, 7, monitor=mon)  # 7 x 32 rows: fewer than DEAD_MIN_ROWS observed, no verdict yet
    assert {a.key: a.dead_ratio for a in mon.snapshot.activations}["act"] is None
    train(model, opt, 1, monitor=mon)  # 256 rows
    acts = {a.key: a for a in mon.snapshot.activations}
    assert set(acts) == {"(root):relu", "act", "(root):tanh"}
    assert acts["act"].dead_ratio == 1.0 and acts["act"].kind == "relu"
    assert acts["(root):relu"].dead_ratio < 0.2
    assert acts["(root):tanh"].saturated_ratio is not None and acts["(root):tanh"].dead_ratio is None
    assert acts["act"].units == 32
    mon.close()


def test_empty_activation_outputs_are_skipped_not_counted_as_probe_failures():
    class Router(nn.Module):
        """Half the steps send no rows to the expert (an MoE expert without tokens)."""

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.expert = nn.Linear(8, 8)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            h = F.relu(self.a(x))
            rows = h[: 0 if self.calls % 2 else h.shape[0]]
            return h.sum() + F.relu(self.expert(rows)).sum()

    torch.manual_seed(0)
    model = Router()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    x = torch.randn(4, 8)
    for _ in range(6):
        opt.zero_grad()
        model(x).backward()
        opt.step()
    assert not mon.guard.errors and "activations" not in mon.guard.disabled
    acts = {a.key: a for a in mon.snapshot.activations}
    assert "(root):relu" in acts and acts["(root):relu"].units == 8
    mon.close()


class _ModuleActs(nn.Module):
    """Activation modules only (the mode can hand over to module hooks), one made dead, one saturated."""

    def __init__(self, functional_from_call: int | None = None) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.b = nn.Linear(32, 32)
        self.dead = nn.ReLU(inplace=True)
        self.c = nn.Linear(32, 8)
        self.tanh = nn.Tanh()
        self.head = nn.Linear(8, 4)
        self.functional_from_call = functional_from_call
        self.calls = 0
        with torch.no_grad():
            self.b.bias.fill_(-100.0)
            self.c.weight.mul_(20.0)

    def forward(self, x):
        self.calls += 1
        h = self.relu(self.relu(self.a(x)))  # the same module twice: "relu" and "relu#1"
        h = self.tanh(self.c(self.dead(self.b(h)) + h))
        if self.functional_from_call is not None and self.calls >= self.functional_from_call:
            h = F.gelu(h)  # a functional call that appears only later
        return self.head(h)


def _activation_run(steps: int, **model_args):
    torch.manual_seed(0)
    model = _ModuleActs(**model_args)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    paths = []
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        paths.append(mon.probe.module_calls is not None)
    return mon, paths


def test_module_activations_hand_over_from_the_mode_to_module_hooks_with_identical_results(monkeypatch):
    import agent.collect.probes as probes

    entered = []

    class CountingMode(probes._Mode):
        def __enter__(self):
            entered.append(1)
            return super().__enter__()

    monkeypatch.setattr(probes, "_Mode", CountingMode)
    hooked, paths = _activation_run(12)
    assert len(entered) == 1  # the first sampled forward only; the other 11 hooked the modules
    assert paths[0] and hooked.probe.module_calls.keys() == {"relu", "dead", "tanh"}
    assert hooked.probe.module_calls["tanh"][0] == "tanh"
    monkeypatch.setattr(probes, "REDISCOVER_EVERY", 1)  # every sampled forward under the mode
    moded, _ = _activation_run(12)
    assert hooked.snapshot.activations == moded.snapshot.activations
    acts = {a.key: a for a in hooked.snapshot.activations}
    assert set(acts) == {"relu", "relu#1", "dead", "tanh"}
    assert acts["dead"].dead_ratio == 1.0 and acts["tanh"].saturated_ratio > 0.5
    hooked.close()
    moded.close()


def test_a_functional_call_keeps_or_brings_back_the_function_mode(monkeypatch):
    import agent.collect.probes as probes

    monkeypatch.setattr(probes, "REDISCOVER_EVERY", 4)
    mon, paths = _activation_run(16, functional_from_call=6)
    assert paths[:5] == [True] * 5  # module activations only: hooks
    assert not any(paths[8:])  # the mode came back at the 8th sampled forward and found F.gelu
    assert "(root):gelu" in {a.key for a in mon.snapshot.activations}
    mon.close()
    mon, paths = _activation_run(3, functional_from_call=1)
    assert not any(paths)
    mon.close()


def test_repeated_calls_and_nested_modules_get_distinct_names():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.lin(self.relu(x)))  # the same module called twice

    model = nn.Sequential(Block(), Block(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    x = torch.randn(4, 8)
    model(x).sum().backward()
    opt.step()
    keys = [a.key for a in mon.snapshot.activations]
    assert keys == sorted(["0.relu", "0.relu#1", "1.relu", "1.relu#1"])
    mon.close()


def test_no_activation_probe_on_non_sampled_steps():
    model, opt = make()
    mon = agent.attach(model, opt, port=None, sample_every=5)
    seen = []
    original = mon.probe.begin

    def spy():
        seen.append(mon.step_index)
        original()

    mon.probe.begin = spy
    train(model, opt, 12, monitor=mon)
    assert seen == [0, 5, 10]
    assert mon.sampled_steps == 3
    mon.close()


def test_parameters_without_gradient_and_frozen_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

        def forward(self, x):
            return self.used(self.frozen(x))

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    by = {l.module: l for l in mon.snapshot.layers}
    assert by["unused"].params_without_grad == 2
    assert by["used"].params_without_grad == 0
    assert "frozen" not in by  # requires_grad=False is intentional: not tracked
    mon.close()


def test_uncleared_gradients_detected_but_accumulation_is_fine():
    def run(zero_grad_every: int, accumulate: int = 1):
        torch.manual_seed(0)
        model = SmallMLP()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mon = agent.attach(model, opt, port=None, sample_every=1, checks=False)
        for step in range(4):
            if zero_grad_every and step % zero_grad_every == 0:
                opt.zero_grad()
            for _ in range(accumulate):
                model(torch.randn(8, 16)).pow(2).mean().backward()
            opt.step()
        value = mon.snapshot.uncleared_grad_norm
        mon.close()
        return value

    assert run(zero_grad_every=1) == 0.0
    assert run(zero_grad_every=1, accumulate=3) == 0.0
    assert run(zero_grad_every=0) > 0.0


def test_zero_grad_between_forward_and_backward_is_fine():
    model, opt = make()
    mon = agent.attach(model, opt, port=None, sample_every=1)
    for _ in range(3):
        out = model(torch.randn(8, 16))
        opt.zero_grad()
        out.sum().backward()
        opt.step()
    assert mon.snapshot.uncleared_grad_norm == 0.0
    mon.close()


def _steps_with_nograd(every: int, steps: int = 30) -> int:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1, checks=False)
    for step in range(steps):
        if step % every == 0:
            with torch.no_grad():
                model(torch.randn(2, 4))  # in training mode
                model.eval()
                model(torch.randn(2, 4))  # correct: not counted
                model.train()
        opt.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
    counted = mon.eval_in_train_forwards
    mon.close()
    return counted


def test_eval_without_model_eval_is_counted_but_no_grad_forwards_of_every_step_are_not():
    assert _steps_with_nograd(every=10) == 3  # evaluation bursts (steps 0, 10, 20) that forgot model.eval()
    # A GAN's fakes or a policy's actions made under no_grad in every step: part of the loop, not an evaluation.
    assert _steps_with_nograd(every=1) == 0


def test_constant_init_found_at_attach():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    with torch.no_grad():
        model[1].weight.fill_(0.1)
    mon = agent.attach(model, port=None)
    assert mon.constant_weights == ("1",)
    mon.close()


def test_loss_logging_without_sync_and_validation():
    model, opt = make()
    mon = agent.attach(model, opt, port=None, sample_every=2)
    losses = train(model, opt, 4, monitor=mon)
    assert mon.first_loss == pytest.approx(losses[0])
    # The loop logs after optimizer.step(), so the sample at step 2 holds the losses of steps 0 and 1.
    assert mon.snapshot.loss == pytest.approx((losses[0] + losses[1]) / 2)
    mon.log(val_loss=torch.tensor(1.5))
    mon.log(val_loss=1.25, accuracy=0.5)
    train(model, opt, 2, monitor=mon)
    assert [v for _, v in mon.val_history] == [1.5, 1.25]
    assert mon.logged.logged_values == {"accuracy": 0.5}
    with pytest.raises(TypeError, match="scalar"):
        mon.log(loss=torch.ones(3))
    with pytest.raises(TypeError, match="number"):
        mon.log(loss="0.5")
    with pytest.raises(TypeError):
        mon.log(loss=None, val_loss=[1.0])
    mon.close()


def test_root_parameters_and_no_optimizer_step_boundaries():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return self.lin(x * self.scale)

    model = Net()
    mon = agent.attach(model, port=None, sample_every=1)
    for _ in range(3):
        model.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        mon.log(lr=0.1, loss=1.0)
        mon.step()
    assert mon.step_index == 3
    by = {l.module: l for l in mon.snapshot.layers}
    assert set(by) == {ROOT, "lin"}
    assert by["lin"].update_norm is not None and by["lin"].update_norm > 0
    assert mon.snapshot.learning_rates == (0.1,)
    mon.close()


def test_samples_counted_from_input_batch():
    model, opt = make()
    mon = agent.attach(model, opt, port=None)
    train(model, opt, 3, monitor=mon, batch=16)
    assert mon.steps.samples_total == 48
    mon.close()


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"port": -1}, ValueError, "port"),
        ({"port": 70000}, ValueError, "port"),
        ({"port": "9"}, TypeError, "port"),
        ({"sample_every": 0}, ValueError, "sample_every"),
        ({"sample_every": -5}, ValueError, "sample_every"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"tls_cert": "/nonexistent.pem"}, ValueError, "tls"),
        ({"webhook_url": "slack"}, ValueError, "webhook_url"),
        ({"thresholds": {"dead_units.nope": 1}}, ValueError, "unknown threshold"),
        ({"bogus": 1}, TypeError, "unknown option"),
    ],
)
def test_attach_rejects_bad_options(kwargs, exc, match):
    model, opt = make()
    with pytest.raises(exc, match=match):
        agent.attach(model, opt, **kwargs)


def test_attach_rejects_bad_model_and_optimizer():
    model, _ = make()
    with pytest.raises(TypeError, match="nn.Module"):
        agent.attach("model")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        agent.attach(model, "adam")
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of the model's parameters"):
        agent.attach(model, other)


def test_options_from_environment(monkeypatch):
    monkeypatch.setenv("NNWATCH_SAMPLE_EVERY", "7")
    monkeypatch.setenv("NNWATCH_PORT", "none")
    monkeypatch.setenv("NNWATCH_ACTIVATIONS", "false")
    monkeypatch.setenv("NNWATCH_THRESHOLDS", "dead_units.ratio=0.3")
    model, opt = make()
    mon = agent.attach(model, opt)
    assert mon.options.sample_every == 7 and mon.options.port is None and mon.url is None
    assert mon.options.activations is False
    assert mon.options.thresholds == {"dead_units.ratio": 0.3}
    mon.close()
    mon = agent.attach(model, opt, sample_every=3)  # explicit wins over the environment
    assert mon.options.sample_every == 3
    mon.close()
    monkeypatch.setenv("NNWATCH_SAMPLE_EVERY", "often")
    with pytest.raises(ValueError, match="NNWATCH_SAMPLE_EVERY"):
        agent.attach(model, opt)


def test_forward_that_raises_leaves_no_mode_behind():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            F.relu(self.lin(x))
            raise ValueError("user bug")

    model = Bad()
    mon = agent.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), port=None, sample_every=1)
    with pytest.raises(ValueError, match="user bug"):
        model(torch.randn(1, 2))
    assert torch.overrides._get_current_function_mode_stack() == []
    assert not torch.nn.modules.module._global_forward_hooks
    mon.close()


def test_agent_does_not_leak_host_memory_over_a_long_run():
    import tracemalloc
    from pathlib import Path

    model, opt = make()
    mon = agent.attach(model, opt, port=None, sample_every=1)
    agent_dir = str(Path(agent.__file__).parent)
    tracemalloc.start()  # before the warm-up, so replaced objects are tracked on both sides
    try:
        # Fill the bounded histories (64 snapshots, 512 losses) with steps above 256: smaller ints are
        # Python's cached objects, so a history still holding some at the first snapshot "grows" by ~5 KB
        # of int objects when they are replaced, which is no leak.
        train(model, opt, 800, monitor=mon)
        gc.collect()
        snap0 = tracemalloc.take_snapshot()
        train(model, opt, 400, monitor=mon)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename") if s.traceback[0].filename.startswith(agent_dir))
    # Every history is bounded and full by now; keeping one snapshot per step would add ~1 MB here.
    assert growth < 20_000, growth
    mon.close()


@pytest.mark.cuda
def test_cuda_memory_and_statistics():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    model = SmallMLP().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    for _ in range(3):
        x = torch.randn(32, 16, device="cuda")
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    snap = mon.snapshot
    assert snap.memory.cuda_allocated["0"] > 0
    assert snap.grad_norm is not None and math.isfinite(snap.grad_norm)
    assert {a.key for a in snap.activations} == {"(root):relu", "(root):tanh"}
    mon.close()


def test_says_when_the_attached_model_never_runs_forward(caplog):
    inner = SmallMLP()

    class Wrapper(torch.nn.Module):  # a LightningModule-like wrapper whose training step calls self.net(x)
        def __init__(self) -> None:
            super().__init__()
            self.net = inner

    wrapper = Wrapper()
    opt = torch.optim.SGD(wrapper.parameters(), lr=0.01)
    with caplog.at_level(logging.INFO, logger="nnwatch"):
        mon = agent.attach(wrapper, opt, port=None)
        train(inner, opt, 25, monitor=mon)
        mon.close()
    lines = [r.getMessage() for r in caplog.records if "no training forward" in r.getMessage()]
    assert len(lines) == 1 and "agent.attach(self.net)" in lines[0]


def test_says_which_activation_modules_run_outside_the_watched_forward(caplog):
    class VAE(torch.nn.Module):  # training decodes through self.decoder(z) outside forward()
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
            self.decoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Sigmoid())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder(x)

    torch.manual_seed(0)
    model = VAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level(logging.INFO, logger="nnwatch"):
        mon = agent.attach(model, opt, port=None)
        for _ in range(25):
            x = torch.randn(8, 16)
            opt.zero_grad()
            loss = (model.decoder(model(x)) - x).pow(2).mean()
            loss.backward()
            opt.step()
        mon.close()
    lines = [r.getMessage() for r in caplog.records if "never ran inside" in r.getMessage()]
    assert len(lines) == 1 and "1 activation module(s)" in lines[0] and ": decoder.1." in lines[0], lines
    assert {a.key for a in mon.snapshot.activations} == {"encoder.1"}


def test_a_nan_loss_is_sampled_on_the_next_step_whatever_the_interval():
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=40)
    for step in range(100):
        opt.zero_grad()
        loss = model(torch.randn(8, 16)).square().mean()
        loss.backward()
        opt.step()
        mon.log(loss=loss * math.nan if step >= 53 else loss)
    [record] = [r for r in mon.history if r.check == "nonfinite_values"]
    assert 53 <= record.first_step <= 56  # sampled at once (log() comes after the step), not at step 80
    assert mon.sampled_steps <= 3 + 2  # steps 0, 40, 80 and one or two early samples, not every NaN step
    mon.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_nan_cuda_loss_is_seen_without_a_sync_between_samples():
    torch.manual_seed(0)
    model = SmallMLP().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=40)
    torch.cuda.synchronize()
    try:
        for step in range(100):
            torch.cuda.set_sync_debug_mode(0 if mon._sampled else "error")  # the tripwire must not sync
            opt.zero_grad()
            loss = model(torch.randn(8, 16, device="cuda")).square().mean()
            loss.backward()
            opt.step()
            mon.log(loss=loss * math.nan if step >= 53 else loss)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    [record] = [r for r in mon.history if r.check == "nonfinite_values"]
    assert 53 <= record.first_step <= 56 and record.last_logged < 70  # seen through the async copy, not at step 80
    mon.close()


def test_dead_units_need_enough_observed_rows_when_each_forward_sees_one_sample():
    """A policy acting one state at a time: eight forwards are eight observations. A unit that fires on ~5% of
    inputs is not dead; a unit that never fires is, once DEAD_MIN_ROWS positions were seen."""
    from agent.collect.sites import DEAD_MIN_ROWS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[:, 0] = 1.0
        model[0].bias[:32] = -1.645  # unit fires when x0 > 1.645: on 5% of standard-normal inputs
        model[0].bias[32:] = -100.0  # never fires: dead
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = agent.attach(model, opt, port=None, sample_every=1, overhead_budget=None, checks=False)
    ratios = []
    for _ in range(DEAD_MIN_ROWS + 40):
        opt.zero_grad()
        model(torch.randn(1, 4)).sum().backward()
        opt.step()
        ratios.append(next(a.dead_ratio for a in mon.snapshot.activations))
    mon.close()
    assert all(r is None for r in ratios[: DEAD_MIN_ROWS - 1])  # not enough evidence yet
    assert ratios[-1] == 0.5  # the 32 units at -100 only: the rare firers are alive within the window


def test_snapshot_carries_the_smallest_loss_of_its_interval():
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = agent.attach(model, opt, port=None, sample_every=2, overhead_budget=None, checks=False)
    for loss in (0.7, -0.3, 0.9, 1.1):  # steps 0 (sampled), 1, 2 (sampled), 3
        opt.zero_grad()
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        mon.log(loss=torch.tensor(loss))
        if mon.step_index == 3:
            assert mon.snapshot.loss_min == pytest.approx(-0.3) and mon.snapshot.loss > mon.snapshot.loss_min
    mon.close()


@pytest.mark.parametrize("zero_grad", [True, False], ids=["cleared", "forgotten"])
def test_forgotten_zero_grad_is_found_when_a_step_runs_many_forwards(zero_grad):
    """An actor-critic episode: one forward per action, one backward over the summed loss at the end. Backward
    reaches the last action's output first; the first action's output only after most gradients accumulated."""
    class ActorCritic(nn.Module):  # a policy head and a value head (the value head's path is short)
        def __init__(self) -> None:
            super().__init__()
            self.body, self.policy, self.value = nn.Linear(4, 32), nn.Linear(32, 2), nn.Linear(32, 1)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.policy(h).softmax(-1), self.value(h)

    torch.manual_seed(0)
    model = ActorCritic()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = agent.attach(model, opt, port=None, sample_every=1, overhead_budget=None)
    for _ in range(12):
        outs = [model(torch.randn(1, 4)) for _ in range(20)]
        losses = [-p[0, 0].log() * 0.5 + (v - 1.0).pow(2).sum() for p, v in outs]
        if zero_grad:
            opt.zero_grad()
        torch.stack(losses).sum().backward()
        opt.step()
        mon.log(loss=torch.stack(losses).sum().detach())
    found = {f.check for f in mon.findings}
    mon.close()
    assert ("gradients_not_cleared" in found) == (not zero_grad), found


@pytest.mark.parametrize("head", ["module", "functional_view"])
def test_a_confident_sigmoid_output_is_not_called_saturated_but_a_hidden_one_is(head):
    """A binary classifier's final sigmoid near 0/1 means confident (BCE's gradient p - y does not vanish); the
    same saturation in a hidden layer starves the layers below it."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(10, 32), nn.Linear(32, 1)
            self.out = nn.Sigmoid()

        def forward(self, x):
            h = torch.sigmoid(8 * self.a(x))  # hidden and saturated: judged
            z = self.b(h)
            return self.out(z) if head == "module" else torch.sigmoid(z).squeeze(-1)

    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (x @ torch.randn(10) > 0).float()
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mon = agent.attach(model, opt, port=None, sample_every=1, overhead_budget=None, checks=False)
    for step in range(200):
        idx = torch.randint(0, 512, (64,))
        p = model(x[idx]).reshape(-1)
        opt.zero_grad()
        F.binary_cross_entropy(p, y[idx]).backward()
        opt.step()
    sat = {a.key: a.saturated_ratio for a in mon.snapshot.activations}
    mon.close()
    output = [k for k in sat if k != "(root):sigmoid"]  # "out", or the second functional call "(root):sigmoid#1"
    assert output and sat["(root):sigmoid"] is not None and sat["(root):sigmoid"] > 0.5  # the hidden one
    assert all(sat[k] is None for k in output), sat  # the output: not judged (it is confident by now)

"""Real model setups: activation checkpointing, tied and frozen weights, sparse gradients, closures,
parameters in several dtypes/devices. Each must give correct signals and raise no finding when healthy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import agent
from tests.setups.tasks import Teacher, finding_checks


def _ref_grad_norms(model: nn.Module) -> dict[str, float]:
    """float64 reference: L2 norm of each module's gradients (sparse gradients coalesced)."""
    acc: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is None or not p.requires_grad:
            continue
        g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        module = name.rpartition(".")[0] or "(root)"
        acc[module] = acc.get(module, 0.0) + float(g.double().pow(2).sum())
    return {k: math.sqrt(v) for k, v in acc.items()}


def _assert_close(snap, ref: dict[str, float]) -> None:
    got = {l.module: l.grad_norm for l in snap.layers if l.grad_norm is not None}
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-5), k


class Blocks(nn.Module):
    """Two residual MLP blocks; ``ckpt`` recomputes each block in backward (activation checkpointing)."""

    def __init__(self, ckpt: str | None = None) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.0)) for _ in range(2))
        self.head = nn.Linear(32, 4)
        self.ckpt = ckpt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            if self.ckpt is None:
                h = h + block(h)
            else:
                h = h + checkpoint(block, h, use_reentrant=self.ckpt == "reentrant")
        return self.head(h)


def _train(model, monitor, steps, *, opt, wrap=None, after_backward=None):
    task = Teacher()
    for _ in range(steps):
        x, y = task.batch()
        opt.zero_grad()
        out = wrap(model, x) if wrap else model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        if after_backward:
            after_backward()
        opt.step()
        monitor.log(loss=loss)


@pytest.mark.parametrize("ckpt", ["non_reentrant", "reentrant", "root"])
def test_activation_checkpointing_gives_the_same_signals(ckpt):
    results = []
    for variant in (None, ckpt):
        torch.manual_seed(0)
        model = Blocks(ckpt=variant if variant in ("non_reentrant", "reentrant") else None)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        wrap = (lambda m, x: checkpoint(m, x, use_reentrant=False)) if variant == "root" else None
        refs = []
        with agent.attach(model, opt, port=None, sample_every=5) as monitor:
            _train(model, monitor, 30, opt=opt, wrap=wrap, after_backward=lambda: refs.append(_ref_grad_norms(model)))
            snap = monitor.snapshot
            _assert_close(snap, refs[snap.step])
            results.append((snap, monitor.steps.samples_total, monitor.eval_in_train_forwards))
            assert finding_checks(monitor) == []
            assert not monitor.guard.errors
    (plain, n_plain, e_plain), (ck, n_ck, e_ck) = results
    assert n_ck == n_plain == 30 * 64  # a recompute in backward is not another batch
    assert e_ck == e_plain == 0  # nor a forward in eval mode (reentrant runs the first pass under no_grad)
    assert [(a.key, a.dead_ratio, a.saturated_ratio) for a in ck.activations] == \
           [(a.key, a.dead_ratio, a.saturated_ratio) for a in plain.activations]
    assert [l.grad_norm for l in ck.layers] == pytest.approx([l.grad_norm for l in plain.layers], rel=1e-5)


class TiedLM(nn.Module):
    """Embedding and output projection share one weight; one block used twice (shared module)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.block = nn.Linear(16, 16)
        self.out = nn.Linear(16, 40, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + F.gelu(self.block(h))
        h = h + F.gelu(self.block(h))  # the same module twice
        return self.out(h.mean(1))


def test_tied_and_shared_weights():
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    with agent.attach(model, opt, port=None, sample_every=1) as monitor:
        for _ in range(30):
            tokens = torch.randint(0, 40, (32, 6), generator=g)
            target = tokens[:, 0]  # learnable: predict the first token
            opt.zero_grad()
            loss = F.cross_entropy(model(tokens), target)
            loss.backward()
            ref = _ref_grad_norms(model)
            opt.step()
            monitor.log(loss=loss)
        snap = monitor.snapshot
        # The tied weight is one parameter, counted once, under the module that owns it first; its gradient
        # is the sum of both uses.
        assert {l.module: l.params for l in snap.layers} == {"embed": 640, "block": 272}
        _assert_close(snap, ref)
        assert sum(l.params for l in snap.layers) == sum(p.numel() for p in model.parameters())
        assert [a.key for a in snap.activations] == ["(root):gelu", "(root):gelu#1"]
        assert finding_checks(monitor) == []
        assert snap.loss < monitor.first_loss


class FrozenBackbone(nn.Module):
    """A frozen feature extractor (with a deliberately constant smoothing filter) and a trainable head."""

    def __init__(self) -> None:
        super().__init__()
        self.smooth = nn.Linear(16, 16, bias=False)
        nn.init.constant_(self.smooth.weight, 1 / 16)  # constant on purpose: a fixed averaging filter
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32 + 16, 4)
        for p in [*self.smooth.parameters(), *self.backbone.parameters()]:
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.backbone(x), self.smooth(x)], 1))


def test_frozen_submodules_raise_nothing():
    torch.manual_seed(0)
    model = FrozenBackbone()
    model.backbone.eval()  # frozen batch-norm statistics, as in fine-tuning
    # The optimizer holds every parameter, frozen ones included (common in fine-tuning scripts).
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with agent.attach(model, opt, port=None, sample_every=1) as monitor:
        _train(model, monitor, 30, opt=opt)
        snap = monitor.snapshot
        assert [l.module for l in snap.layers] == ["head"]
        assert monitor.constant_weights == ()
        assert finding_checks(monitor) == []
        # Unfreezing later is picked up on the next sample.
        for p in model.backbone[0].parameters():
            p.requires_grad_(True)
        _train(model, monitor, 2, opt=opt)
        assert [l.module for l in monitor.snapshot.layers] == ["backbone.0", "head"]
        assert monitor.snapshot.layers[0].update_norm and monitor.snapshot.layers[0].update_norm > 0


class SparseModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8, sparse=True)
        self.head = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.embed(tokens).mean(1)))


def _tokens(g):
    tokens = torch.randint(0, 50, (32, 5), generator=g)
    tokens[:, 1] = tokens[:, 0]  # repeated indices: an uncoalesced sparse gradient
    return tokens, tokens[:, 0] % 4


def test_sparse_gradients_with_sgd():
    torch.manual_seed(0)
    model = SparseModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # SGD takes sparse and dense gradients
    g = torch.Generator().manual_seed(0)
    with agent.attach(model, opt, port=None, sample_every=1) as monitor:
        for _ in range(30):
            tokens, y = _tokens(g)
            opt.zero_grad()
            loss = F.cross_entropy(model(tokens), y)
            loss.backward()
            assert model.embed.weight.grad.is_sparse
            ref = _ref_grad_norms(model)
            opt.step()
            monitor.log(loss=loss)
        snap = monitor.snapshot
        _assert_close(snap, ref)
        assert all(l.update_norm and l.update_norm > 0 for l in snap.layers)
        assert not monitor.guard.errors
        # 30 steps barely move this loss off ln(4) (97% of its start): loss_not_decreasing says so, rightly,
        # and no longer flaps off before the end. Nothing about the sparse gradients themselves.
        assert [c for c in finding_checks(monitor) if not c.startswith("loss_not_decreasing")] == []


def test_sparse_adam_plus_dense_adam_without_attached_optimizer():
    # Two optimizers: attach none and mark steps with monitor.step(); updates are measured between steps.
    torch.manual_seed(0)
    model = SparseModel()
    sparse_opt = torch.optim.SparseAdam([model.embed.weight], lr=1e-2)
    dense_opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    with agent.attach(model, port=None, sample_every=2) as monitor:
        for _ in range(30):
            tokens, y = _tokens(g)
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss = F.cross_entropy(model(tokens), y)
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
            monitor.log(loss=loss, lr=1e-2)
            monitor.step()
        snap = monitor.snapshot
        assert all(l.update_norm and l.update_norm > 0 for l in snap.layers)
        assert not monitor.guard.errors
        assert finding_checks(monitor) == []


def test_closure_optimizer_reads_gradients_after_backward():
    # LBFGS (and Lightning) run forward and backward inside optimizer.step(closure).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=2)
    task = Teacher()
    with agent.attach(model, opt, port=None, sample_every=1) as monitor:
        for _ in range(8):
            x, y = task.batch()
            refs = []

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                refs.append(_ref_grad_norms(model))
                return loss

            loss = opt.step(closure)
            monitor.log(loss=loss)
        # LBFGS leaves the gradients of its last closure call in place.
        _assert_close(monitor.snapshot, refs[-1])
        assert monitor.findings == [] and not monitor.guard.errors


def test_parameters_in_several_dtypes():
    # The CPU stand-in for several devices: kernels group tensors by (device, dtype).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    model[0].double()
    model[2].register_forward_pre_hook(lambda m, args: (args[0].float(),))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    task = Teacher()
    with agent.attach(model, opt, port=None, sample_every=1) as monitor:
        refs = []
        for _ in range(10):
            x, y = task.batch()
            opt.zero_grad()
            loss = F.cross_entropy(model(x.double()).float(), y)
            loss.backward()
            refs.append(_ref_grad_norms(model))
            opt.step()
            monitor.log(loss=loss)
        _assert_close(monitor.snapshot, refs[-1])
        assert not monitor.guard.errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU + CUDA parameters)")
def test_parameters_on_cpu_and_cuda():
    torch.manual_seed(0)

    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(16, 32)
            self.b = nn.Linear(32, 4).cuda()

        def forward(self, x):
            return self.b(F.relu(self.a(x)).cuda())

    model = Split()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    task = Teacher()
    with agent.attach(model, opt, port=None, sample_every=1) as monitor:
        for _ in range(10):
            x, y = task.batch()
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y.cuda())
            loss.backward()
            ref = _ref_grad_norms(model)
            opt.step()
            monitor.log(loss=loss)
        _assert_close(monitor.snapshot, ref)
        assert not monitor.guard.errors and monitor.findings == []
        assert monitor.snapshot.update_ratio is not None


EXAMPLES = {
    "amp_gradscaler.py": ["--steps", "20"],
    "resume_checkpoint.py": ["{tmp}/ckpt.pt", "--steps", "10"],
    "lightning_callback.py": ["--steps", "8", "--port", "0"],
    "hf_trainer.py": ["--steps", "4", "--port", "0"],
    "ddp_torchrun.py": ["--steps", "10", "--port", "0"],
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_setup_examples_run(name, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = [a.format(tmp=tmp_path) for a in EXAMPLES[name]]
    cmd = [sys.executable, str(root / "examples" / name), *args]
    if name == "ddp_torchrun.py":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *cmd[1:]]
    env = {**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "findings []" in proc.stdout, proc.stdout[-2000:]

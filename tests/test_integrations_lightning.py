"""PyTorch Lightning callback: a tiny real LightningModule and Trainer on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import require_module

pl = require_module("lightning.pytorch")

from agent.integrations.lightning import NNWatchCallback  # noqa: E402
from tests.setups.tasks import Teacher  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=5e-3)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loader(seed: int, n: int = 32 * 12) -> DataLoader:
    x, y = Teacher(seed=seed).batch(n)
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _trainer(tmp_path, callbacks, max_steps, **kw):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks,
                      val_check_interval=6, num_sanity_val_steps=0, limit_val_batches=2, **kw)


def test_lightning_callback_wires_loss_lr_and_validation(tmp_path):
    torch.manual_seed(0)
    module = Classifier()
    cb = NNWatchCallback(port=None, sample_every=2, num_classes=4)
    _trainer(tmp_path, [cb], 24, enable_checkpointing=False).fit(module, _loader(0), _loader(1))
    m = cb.monitor
    assert m.step_index == 24  # one step per optimizer step (Lightning passes a closure to step())
    assert m.first_loss == pytest.approx(math.log(4), rel=0.3)
    snap = m.snapshot
    assert snap.loss is not None and snap.loss < m.first_loss
    assert m.steps.learning_rates == (pytest.approx(5e-3 * 0.25),)  # StepLR halved it at steps 10 and 20
    assert [s for s, _ in m.val_history] == [6, 12, 18]  # the one at 24 waits for a next sample
    assert all(l.grad_norm and l.update_norm for l in snap.layers)  # gradients read after the closure
    assert m.findings == [] and not m.guard.errors
    assert not module._forward_hooks and not module._forward_pre_hooks  # closed at the end of fit


def test_lightning_resume_continues_the_monitor(tmp_path):
    torch.manual_seed(0)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=12, save_top_k=-1)
    first = NNWatchCallback(port=None, sample_every=2, num_classes=4)
    _trainer(tmp_path, [first, ckpt_cb], 12).fit(Classifier(), _loader(0), _loader(1))
    path = next(tmp_path.glob("*step=12*.ckpt"))
    assert torch.load(path, weights_only=False)["callbacks"]  # the monitor's state is in the checkpoint

    second = NNWatchCallback(port=None, sample_every=2, num_classes=4)
    _trainer(tmp_path, [second], 18, enable_checkpointing=False).fit(Classifier(), _loader(0), _loader(1),
                                                                     ckpt_path=path)
    assert second.monitor.step_index == 18
    assert second.monitor.first_loss == first.monitor.first_loss  # no loss_at_init on the resumed loss
    assert second.monitor.findings == []


class DetachedClassifier(Classifier):
    def forward(self, x):
        return self.net[2](self.net[1](self.net[0](x)).detach())  # the first layer never learns


def _shuffled(seed: int) -> DataLoader:
    x, y = Teacher(seed=seed).batch(32 * 8)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def test_lightning_preflight_option_runs_before_training_and_changes_nothing(tmp_path, caplog):
    weights = []
    for preflight in (None, F.cross_entropy):
        torch.manual_seed(0)
        module = Classifier()
        cb = NNWatchCallback(port=None, num_classes=4, preflight=preflight)
        _trainer(tmp_path, [cb], 6, enable_checkpointing=False).fit(module, _shuffled(0), _loader(1))
        weights.append([p.detach().clone() for p in module.parameters()])
    report = cb.preflight_report
    assert report is not None and report.ok, str(report)
    assert report["loss_at_init"].message.endswith("expected ln(4) = 1.386 ± 0.5")  # num_classes from the callback
    assert "nnwatch preflight: 5 passed" in caplog.text
    # Same shuffled batches, same weights: preflight ran on a copy and put the random generators back.
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_lightning_strict_preflight_stops_a_broken_module_before_its_first_step(tmp_path):
    import agent

    torch.manual_seed(0)
    cb = NNWatchCallback(port=None, preflight={"loss_fn": F.cross_entropy, "strict": True, "steps": 20})
    with pytest.raises(agent.PreflightError, match="gradient_reachability") as err:
        _trainer(tmp_path, [cb], 6, enable_checkpointing=False).fit(DetachedClassifier(), _loader(0), _loader(1))
    assert "net.0.weight, net.0.bias" in str(err.value)
    assert cb.monitor is None  # training never started


def test_lightning_preflight_option_is_checked_when_the_callback_is_built():
    with pytest.raises(ValueError, match="needs the loss"):
        NNWatchCallback(port=None, preflight=True)
    with pytest.raises(ValueError, match="unknown preflight option"):
        NNWatchCallback(port=None, preflight={"loss_fn": F.cross_entropy, "stepz": 5})


def test_core_never_imports_frameworks():
    import subprocess
    import sys

    code = ("import sys, agent; agent.attach(__import__('torch').nn.Linear(2, 2), port=None).close(); "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

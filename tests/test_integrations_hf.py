"""Hugging Face Trainer callback: a tiny BERT built from a config (no download) trained on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import require_module

transformers = require_module("transformers")
require_module("accelerate")

from agent.integrations.hf import NNWatchHFCallback  # noqa: E402


class Pairs(torch.utils.data.Dataset):
    """Token sequences labelled by whether token 1 appears in them: learnable, in memory."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, 30, (n, 8), generator=g)
        mark = torch.rand(n, generator=g) < 0.5
        self.ids[mark, 3] = 1
        self.labels = mark.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _model():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(cfg)


def _args(tmp_path, max_steps, **kw):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=16, per_device_eval_batch_size=32,
        learning_rate=2e-3, lr_scheduler_type="constant", logging_steps=4, eval_strategy="steps", eval_steps=6,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0, **kw)


def _monitor_of(trainer):
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, NNWatchHFCallback)).monitor


def test_hf_trainer_callback_wires_loss_lr_and_eval_loss(tmp_path):
    model = _model()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, 18, save_strategy="no"),
                                   train_dataset=Pairs(320, 0), eval_dataset=Pairs(64, 1),
                                   callbacks=[NNWatchHFCallback(port=None, sample_every=2, num_classes=2)])
    trainer.train()
    m = _monitor_of(trainer)
    assert m.step_index == 18
    assert m.first_loss == pytest.approx(math.log(2), rel=0.2)  # the model output's loss of the first batch
    assert m.steps.learning_rates == (pytest.approx(2e-3), pytest.approx(2e-3))  # decay / no-decay groups
    assert [s for s, _ in m.val_history] == [6, 12]  # eval_loss at steps 6 and 12 (18 awaits a sample)
    assert m.snapshot.layers and all(l.grad_norm is not None for l in m.snapshot.layers)
    assert m.steps.samples_total == 18 * 16
    assert m.findings == [] and not m.guard.errors
    assert not model._forward_hooks and not model._forward_pre_hooks  # detached at the end


def test_hf_resume_restores_the_monitor_from_the_checkpoint(tmp_path):
    args = _args(tmp_path, 12, save_strategy="steps", save_steps=12)
    first = transformers.Trainer(model=_model(), args=args, train_dataset=Pairs(320, 0), eval_dataset=Pairs(64, 1),
                                 callbacks=[NNWatchHFCallback(port=None, sample_every=2, num_classes=2)])
    first.train()
    first_loss = _monitor_of(first).first_loss

    resumed = transformers.Trainer(model=_model(), args=_args(tmp_path, 16, save_strategy="no"),
                                   train_dataset=Pairs(320, 0), eval_dataset=Pairs(64, 1),
                                   callbacks=[NNWatchHFCallback(port=None, sample_every=2, num_classes=2)])
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-12"))
    m = _monitor_of(resumed)
    assert m.step_index == 16
    assert m.first_loss == first_loss  # restored: the resumed, lower loss is not taken for the first one
    assert m.findings == []

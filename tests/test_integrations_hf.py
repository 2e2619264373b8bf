"""Hugging Face Trainer callback: a tiny BERT built from a config (no download) trained on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import require_module

transformers = require_module("transformers")
require_module("accelerate")

from agent.integrations.hf import NNWatchHFCallback, _zero_inputs, preflight  # noqa: E402


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


def _collated(n: int = 32) -> dict[str, torch.Tensor]:
    ds = Pairs(n, 0)
    return {k: torch.stack([ds[i][k] for i in range(n)]) for k in ds[0]}


def test_hf_preflight_helper_uses_the_models_own_loss_and_keeps_the_masks():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = preflight(model, _collated())
    assert report.ok, str(report)
    assert report["loss_at_init"].message.startswith("first loss 0.69")  # ln(2): num_labels inferred from the logits
    assert "bert.embeddings.word_embeddings (Embedding)" in report["batch_independence"].message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # The baseline turns input_ids into the pad token and keeps the attention mask and the labels.
    batch = _collated(4)
    zeroed = _zero_inputs(batch, 0)
    assert torch.equal(zeroed["input_ids"], torch.zeros_like(batch["input_ids"]))
    assert torch.equal(zeroed["attention_mask"], batch["attention_mask"])
    assert torch.equal(zeroed["labels"], batch["labels"])
    # A loss function of the logits replaces the model's own loss.
    calls = []

    def loss_fn(logits, labels):
        calls.append(type(logits))
        return F.cross_entropy(logits, labels)

    report = preflight(model, _collated(), steps=3, loss_fn=loss_fn)
    assert calls[-1] is torch.Tensor and report["loss_at_init"].ok


def test_hf_callback_preflight_option_runs_on_the_first_batch_and_training_is_unchanged(tmp_path):
    weights = []
    for option in (None, True):
        model = _model()
        trainer = transformers.Trainer(model=model, args=_args(tmp_path, 4, save_strategy="no"),
                                       train_dataset=Pairs(320, 0), eval_dataset=Pairs(64, 1),
                                       callbacks=[NNWatchHFCallback(port=None, preflight=option)])
        trainer.train()
        weights.append([p.detach().clone() for p in model.parameters()])
    cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NNWatchHFCallback))
    assert cb.preflight_report is not None and cb.preflight_report.ok, str(cb.preflight_report)
    assert cb.preflight_report.batch_size == 16  # per_device_train_batch_size
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_hf_callback_strict_preflight_stops_training(tmp_path):
    import agent

    zero_lr = {"strict": True, "steps": 5, "optimizer": lambda p: torch.optim.SGD(p, lr=0.0)}
    trainer = transformers.Trainer(model=_model(), args=_args(tmp_path, 4, save_strategy="no"),
                                   train_dataset=Pairs(320, 0), eval_dataset=Pairs(64, 1),
                                   callbacks=[NNWatchHFCallback(port=None, preflight=zero_lr)])
    with pytest.raises(agent.PreflightError, match="overfit_one_batch"):
        trainer.train()
    assert trainer.state.global_step == 0

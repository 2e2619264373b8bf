"""Hugging Face Trainer: one callback wires the model's loss, learning rate and eval_loss into nnwatch.
The tiny BERT is built from a config (no download).

    pip install transformers accelerate
    python examples/hf_trainer.py              # /metrics on :9945 while it trains
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from agent.integrations.hf import NNWatchHFCallback


class Marked(torch.utils.data.Dataset):
    """Label 1 when token 1 appears in the sequence."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, 30, (n, 8), generator=g)
        self.labels = (torch.rand(n, generator=g) < 0.5).long()
        self.ids[self.labels == 1, 3] = 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--port", type=int, default=9945)
    args = p.parse_args()
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg)
    cb = NNWatchHFCallback(port=args.port, num_classes=2)
    targs = transformers.TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=args.steps, learning_rate=1e-3,
                                           per_device_train_batch_size=32, eval_strategy="steps", eval_steps=20,
                                           logging_steps=20, report_to=[], use_cpu=True, save_strategy="no")
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=Marked(2000, 0), eval_dataset=Marked(200, 1),
                                   callbacks=[cb])
    trainer.train()
    print(f"step {cb.monitor.step_index}, findings {[f.check for f in cb.monitor.findings]}")


if __name__ == "__main__":
    main()

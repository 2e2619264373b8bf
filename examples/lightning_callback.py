"""PyTorch Lightning: one callback wires loss, learning rate and validation loss into nnwatch.

    pip install lightning
    python examples/lightning_callback.py      # /metrics on :9945 while it trains
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from agent.integrations.lightning import NNWatchCallback


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def data(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=torch.Generator().manual_seed(123))).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=64)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--port", type=int, default=9945)
    args = p.parse_args()
    cb = NNWatchCallback(port=args.port, num_classes=4)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[cb], val_check_interval=50)
    trainer.fit(Classifier(), data(64 * 100, 0), data(256, 1))
    print(f"step {cb.monitor.step_index}, findings {[f.check for f in cb.monitor.findings]}")


if __name__ == "__main__":
    main()

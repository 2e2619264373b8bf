"""Resume from a checkpoint: the monitor's state is saved with the model, so the restarted job continues
its step counter and its checks (no loss_at_init on the resumed, lower loss).

    python examples/resume_checkpoint.py /tmp/nnwatch-ckpt.pt   # run it twice: the second run resumes
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn

import agent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    monitor = agent.attach(model, opt, port=None, num_classes=4)
    if os.path.exists(args.checkpoint):
        ckpt = torch.load(args.checkpoint)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        monitor.load_state_dict(ckpt["nnwatch"])
        print(f"resumed at step {monitor.step_index}")
    teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(123))
    for _ in range(args.steps):
        x = torch.randn(64, 16)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), (x @ teacher).argmax(1))
        loss.backward()
        opt.step()
        monitor.log(loss=loss)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "nnwatch": monitor.state_dict()},
               args.checkpoint)
    print(f"saved at step {monitor.step_index}; findings {[f.check for f in monitor.findings]}")
    monitor.close()


if __name__ == "__main__":
    main()

"""Mixed precision with a GradScaler: skipped steps are expected, a collapsing scale is reported.

    python examples/amp_gradscaler.py              # fp16 autocast (CUDA if present, else CPU)
    python examples/amp_gradscaler.py --collapse   # every step overflows: nonfinite_values fires
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

import agent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--collapse", action="store_true", help="plant an overflow on every step after the 5th")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**20)  # high: the first steps overflow and are skipped
    teacher = torch.randn(16, 4, device=device)
    with agent.attach(model, opt, port=None, sample_every=5) as monitor:
        monitor.watch_scaler(scaler)
        for step in range(args.steps):
            x = torch.randn(64, 16, device=device)
            opt.zero_grad()
            with torch.autocast(device, dtype=torch.float16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), (x @ teacher).argmax(1))
            if args.collapse and step >= 5:
                loss = loss * math.inf
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            monitor.log(loss=loss)
        print(f"skipped {monitor.amp.skipped_total} of {monitor.step_index} steps, scale {scaler.get_scale():.3g}, "
              f"findings {[f.check for f in monitor.findings]}")


if __name__ == "__main__":
    main()

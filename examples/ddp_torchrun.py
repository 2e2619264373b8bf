"""DDP on CPU with gloo, watched by nnwatch: each rank serves /metrics on 9945 + LOCAL_RANK.

    torchrun --standalone --nproc-per-node 2 examples/ddp_torchrun.py --steps 200
    curl -s localhost:9945/metrics | grep nnwatch_weight_fingerprint    # rank 0 (per-module series too)
    curl -s localhost:9946/metrics | grep nnwatch_weight_fingerprint    # rank 1 (per-rank scalars only)
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import agent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--port", type=int, default=9945)
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # identical replicas on every rank
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = agent.attach(model, opt, port=args.port, fingerprint_every=50)
    g = torch.Generator().manual_seed(dist.get_rank())  # each rank its own data
    teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(123))
    for _ in range(args.steps):
        x = torch.randn(64, 16, generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), (x @ teacher).argmax(1))
        loss.backward()
        opt.step()
        monitor.log(loss=loss)
    if dist.get_rank() == 0:
        print(f"rank 0: step {monitor.step_index}, findings {[f.check for f in monitor.findings]}")
    monitor.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""A DDP training job for tests/test_distributed.py, run as ``torchrun --nproc-per-node 2 ddp_train.py``.

Scenarios: ``healthy``; ``desync`` (rank 1 scales a weight in place once, without an all-reduce, so its
replica drifts away for good); ``straggler`` (rank 1's data loading is slow, so the other rank waits for it
in every gradient all-reduce). Each rank serves /metrics on ``--port`` + LOCAL_RANK, trains, then keeps
serving until ``--done`` exists (the test has scraped what it needs) or ``--hold`` seconds pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import agent  # noqa: E402
from tests.setups.tasks import Teacher  # noqa: E402
from tests.setups.teardown import finish  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", choices=("healthy", "desync", "straggler"), required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data-seconds", type=float, default=0.02, help="simulated data loading per step")
    p.add_argument("--straggle-seconds", type=float, default=0.15)
    p.add_argument("--done", required=True)
    p.add_argument("--hold", type=float, default=60.0)
    args = p.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    monitor = agent.attach(ddp, opt, port=args.port, addr="127.0.0.1", sample_every=5, job=args.scenario)
    Path(f"{args.done}.rank{rank}.url").write_text(monitor.url or "")
    task = Teacher(seed=rank)
    for step in range(args.steps):
        wait = args.data_seconds
        if args.scenario == "straggler" and rank == 1:
            wait += args.straggle_seconds
        time.sleep(wait)  # the data loader
        x, y = task.batch()
        opt.zero_grad()
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        monitor.log(loss=loss)
        if args.scenario == "desync" and rank == 1 and step == 10:
            with torch.no_grad():  # a local write no all-reduce undoes (e.g. a rank-local weight fix-up)
                model[0].weight.mul_(1.05)
    Path(f"{args.done}.rank{rank}.trained").write_text(str(monitor.step_index))
    deadline = time.monotonic() + args.hold
    while not os.path.exists(args.done) and time.monotonic() < deadline:
        time.sleep(0.1)
    monitor.close()
    del monitor, ddp, model, opt, x, y, loss
    finish()


if __name__ == "__main__":
    main()

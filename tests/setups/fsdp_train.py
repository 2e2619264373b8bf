"""FSDP2 (fully_shard) on CPU with gloo, for tests/test_distributed.py: each rank writes what it exports
(squared norms of its shards) and the true full-model norms (all-gathered) to ``--out``.rank<N>.json."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from prometheus_client import CollectorRegistry
from torch import nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import agent  # noqa: E402
from agent.export.collector import NNWatchCollector  # noqa: E402
from tests.setups.tasks import Teacher  # noqa: E402
from tests.setups.teardown import finish  # noqa: E402


def full_norms(model: nn.Module, grads: bool) -> dict[str, float]:
    """Reference: per-module L2 norms of the full (all-gathered) tensors; a collective on every rank."""
    acc: dict[str, float] = {}
    for name, p in model.named_parameters():
        t = p.grad if grads else p
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        module = name.rpartition(".")[0] or "(root)"
        acc[module] = acc.get(module, 0.0) + float(full.detach().double().pow(2).sum())
    return {k: math.sqrt(v) for k, v in acc.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    # The head has 5 rows: uneven shards of 3 and 2 rows on the two ranks.
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    monitor = agent.attach(model, opt, port=None, sample_every=1)
    task = Teacher(classes=5, seed=rank)
    for _ in range(4):
        x, y = task.batch(32)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grad_ref = full_norms(model, grads=True)
        opt.step()
        monitor.log(loss=loss)
    weight_ref = full_norms(model, grads=False)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NNWatchCollector(monitor))
    exported = [
        {"name": s.name, "labels": s.labels, "value": s.value}
        for fam in reg.collect() for s in fam.samples
    ]
    Path(f"{args.out}.rank{rank}.json").write_text(json.dumps({
        "sharded": monitor.sharded, "per_module": monitor.per_module, "errors": dict(monitor.guard.errors),
        "findings": [f.check for f in monitor.findings], "grad_ref": grad_ref, "weight_ref": weight_ref,
        "exported": exported,
    }))
    monitor.close()
    del monitor, task, exported, reg, model, opt, x, y, loss
    finish()


if __name__ == "__main__":
    main()

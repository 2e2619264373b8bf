"""docs/metrics.md documents every family the agent exports, and nothing that no longer exists."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, generate_latest

import agent
from agent.export.collector import NNWatchCollector
from tests.helpers import SmallMLP, train

ROOT = Path(__file__).resolve().parent.parent


def documented() -> set[str]:
    names: set[str] = set()
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        if line.startswith("| nnwatch_"):
            names.update(n.strip() for n in line.split("|")[1].split(","))
    return names


def test_every_exported_family_is_documented():
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1, num_classes=4)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NNWatchCollector(mon, extra_labels={}))
    train(model, opt, 3, monitor=mon)
    mon.log(val_loss=1.0, accuracy=0.5)
    train(model, opt, 1, monitor=mon)
    text = generate_latest(registry).decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))  # counters already end in _total here
    missing = exported - documented()
    assert not missing, f"document these in docs/metrics.md: {sorted(missing)}"
    mon.close()


def test_no_stale_family_in_the_docs():
    source = (ROOT / "agent" / "export" / "collector.py").read_text()
    stale = {n for n in documented() if f'"{n.removesuffix("_total")}"' not in source}
    assert not stale, f"docs/metrics.md lists families the exporter no longer has: {sorted(stale)}"

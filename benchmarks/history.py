"""The local history's size bound and cost (docs/report.md quotes the numbers).

``python -m benchmarks.history size``: writes a simulated run straight through HistoryWriter (no training): a
million steps at the default ``sample_every`` (100,000 samples) of a model with 200 parameter layers and 200
activation sites, random values; prints the file size and the writer thread's time per sample.
``python -m benchmarks.history overhead``: step time of a training loop with the agent at its defaults, with and
without ``history=``, in interleaved blocks of steps; prints the median ratio and its quartiles.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from agent.export.history import HistoryWriter
from agent.snapshot import ActivationStats, LayerStats, MemoryStats, Snapshot


def _template(rng: random.Random, layers: int, activations: int) -> Snapshot:
    return Snapshot(
        step=0, time=0.0, loss=rng.random(), val_loss=rng.random(), learning_rates=(rng.random() * 1e-3,),
        layers=tuple(LayerStats(f"blocks.{i // 4}.layer{i % 4}", 1000, grad_norm=rng.random(), weight_norm=rng.random() * 10,
                                update_norm=rng.random() * 1e-2, grad_nonfinite=0, weight_nonfinite=0,
                                params_without_grad=0) for i in range(layers)),
        activations=tuple(ActivationStats(f"blocks.{i // 2}.act{i % 2}", "relu", 512, dead_ratio=rng.random(),
                                          saturated_ratio=None, nonfinite=0) for i in range(activations)),
        memory=MemoryStats(host_rss=rng.random() * 2**33))


def size(steps: int, sample_every: int, layers: int, activations: int, keep: str | None = None) -> dict[str, float]:
    rng = random.Random(0)
    templates = [_template(rng, layers, activations) for _ in range(16)]  # distinct values: no compressible runs
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(keep) if keep else Path(tmp) / "history.sqlite"
        path.unlink(missing_ok=True)
        writer = HistoryWriter(path, max_queue=4096)
        samples = steps // sample_every
        t0 = time.perf_counter()
        for k in range(samples):
            writer.record(replace(templates[rng.randrange(16)], step=k * sample_every, time=1.7e9 + k))
            if k % 2000 == 1999:
                writer.flush(600)
        writer.close(timeout=600)
        seconds = time.perf_counter() - t0
        assert writer.dropped == 0, writer.dropped
        return {"samples": samples, "kept": _count(path), "bytes": path.stat().st_size,
                "ms_per_sample": 1000 * seconds / samples}


def _count(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        conn.close()


def overhead(family: str, model_size: str, rounds: int, block: int) -> dict[str, float]:
    """Two copies of the model train side by side in one process, one watched with defaults and one with
    ``history=`` too, alternating blocks of ``block`` steps (the order flips every round), so machine noise
    hits both alike; returns the median over rounds of (mean step time with history / without)."""
    import torch

    import agent
    from benchmarks.models import workload

    w = workload(family, model_size)
    batches = w.batches()
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, history in (("plain", None), ("history", f"{tmp}/history.sqlite")):
            torch.manual_seed(0)
            model = w.build()
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            mon = agent.attach(model, opt, port=None, history=history, console_log=False, log_findings=False)
            arms[name] = (model, opt, mon, [0])

        def run(name: str) -> float:
            model, opt, mon, step = arms[name]
            t0 = time.perf_counter()
            for _ in range(block):
                x, y = batches[step[0] % len(batches)]
                step[0] += 1
                loss = w.loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.log(loss=loss)
            return (time.perf_counter() - t0) / block

        run("plain"), run("history")  # warm-up
        ratios: list[float] = []
        step_times: list[float] = []
        for r in range(rounds):
            order = ("plain", "history") if r % 2 == 0 else ("history", "plain")
            t = {name: run(name) for name in order}
            ratios.append(t["history"] / t["plain"])
            step_times.append(t["plain"])
        mon = arms["history"][2]
        for _, _, m, _ in arms.values():
            m.close()
        sink = mon.sinks[0]
        steps = arms["history"][3][0]
        step_s = statistics.median(step_times)
    # The writer's CPU time per training step, against the step time: what it takes from a machine whose cores
    # are all busy (on a machine with a spare core it runs beside the step).
    return {"median_ratio": statistics.median(ratios), "q1": statistics.quantiles(ratios, n=4)[0],
            "q3": statistics.quantiles(ratios, n=4)[2], "rounds": rounds, "block": block,
            "samples": mon.sampled_steps, "steps": steps, "step_ms": 1000 * step_s,
            "writer_ms_per_sample": 1000 * sink.cpu_seconds / max(1, sink.written),
            "writer_share_of_step_time": sink.cpu_seconds / steps / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=("size", "overhead"))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sample-every", type=int, default=10)
    p.add_argument("--layers", type=int, default=200)
    p.add_argument("--activations", type=int, default=200)
    p.add_argument("--family", default="mlp")
    p.add_argument("--size", default="1M")
    p.add_argument("--keep", help="size: write the history here (and keep it) instead of a temporary file")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--block", type=int, default=50)
    args = p.parse_args()
    if args.what == "size":
        print(size(args.steps or 1_000_000, args.sample_every, args.layers, args.activations, args.keep))
    else:
        print(overhead(args.family, args.size, args.rounds, args.block))


if __name__ == "__main__":
    main()

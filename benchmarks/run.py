"""Run the benchmarks and write docs/benchmarks.md and docs/benchmarks.png.

    python -m benchmarks.run            # full: 3 families x 1M..64M parameters, ~1 hour
    python -m benchmarks.run --quick    # 3 families at 1M, short scaling sweep, ~4 minutes

Full runs write into docs/ (the committed results); quick runs into benchmarks/out/ unless --out is
given. Raw results go to <out>/benchmarks.json; ``python -m benchmarks.report`` re-renders them.
The wandb peers need ``pip install -r benchmarks/requirements.txt``; without it they are left out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402

from agent.collect import native  # noqa: E402

from . import report  # noqa: E402
from .allocator import keep_freed_memory  # noqa: E402
from .arms import ARMS, have_wandb  # noqa: E402
from .floor import measure_floor  # noqa: E402
from .machine import describe  # noqa: E402
from .models import FAMILIES, SIZES, workload  # noqa: E402
from .overhead import run_overhead  # noqa: E402
from .scaling import memory_point, render_point  # noqa: E402


BUDGET_S = {"1M": 150.0, "4M": 150.0, "16M": 240.0, "64M": 360.0}
"""Seconds of interleaved rounds per model in a full run: bigger models get more, as their rounds are fewer."""
QUICK_BUDGET_S = 60.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1M models only, short budgets (~4 minutes)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: mlp,cnn,transformer")
    p.add_argument("--sizes", default=None, help=f"comma-separated from {','.join(SIZES)} (default: all; --quick: 1M)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms (plain is always included)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds per model for the interleaved rounds (default: by size, see BUDGET_S)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per model, each with freshly built arms")
    p.add_argument("--layers", default=None, help="comma-separated layer counts for the /metrics sweep")
    p.add_argument("--device", default="cpu", help="where models train: cpu (default) or cuda; steps are timed to "
                   "the end of their device work")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="directory for benchmarks.md/.png/.json (default: docs, --quick: benchmarks/out)")
    p.add_argument("--update", action="store_true",
                   help="merge into the results already in --out: rows of the models run now replace theirs, the rest stay")
    p.add_argument("--skip-scaling", action="store_true", help="no /metrics sweep and no memory accounting")
    p.add_argument("--floor-only", action="store_true",
                   help="only the floor and kernel timings (a minute or two; with --update, after a kernel change)")
    p.add_argument("--system-allocator", action="store_true",
                   help="leave glibc's malloc as it is (default: keep freed memory, see benchmarks/allocator.py)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.getLogger("nnwatch").setLevel(logging.ERROR)  # findings on toy data are not the point here
    allocator = None if args.system_allocator else keep_freed_memory()  # before any model is built
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    families = [f for f in args.families.split(",") if f]
    sizes = (args.sizes or ("1M" if quick else ",".join(SIZES))).split(",")
    arms = tuple(dict.fromkeys(["plain", *[a for a in args.arms.split(",") if a]]))
    notes: list[str] = []
    if not have_wandb():
        arms = tuple(a for a in arms if not a.startswith("wandb"))
        notes.append("- wandb is not installed here: its arms were left out (`pip install -r benchmarks/requirements.txt`).")
    budgets = {size: args.budget if args.budget is not None else (QUICK_BUDGET_S if quick else BUDGET_S.get(size, 200.0))
               for size in sizes}
    layers = [int(x) for x in (args.layers or ("10,250" if quick else "10,50,100,200,250,500,1000")).split(",")]
    out = Path(args.out) if args.out else Path("benchmarks/out" if quick else "docs")

    started = time.time()
    load0 = os.getloadavg()[0]
    command = "python -m benchmarks.run" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    print(f"nnwatch benchmarks ({'quick' if quick else 'full'}): {len(families) * len(sizes)} models, arms {', '.join(arms)}", flush=True)
    kernels = native.build()  # before any arm: every arm and the floor see the same statistics path
    machine = describe()
    machine["native"] = kernels.state + (f" ({kernels.reason})" if kernels.reason else "")
    machine["allocator"] = allocator or "the system's malloc, as it is"
    results: dict[str, Any] = {"machine": machine, "mode": "quick" if quick else "full", "command": command.strip(),
                               "started": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                               "overhead": [], "floor": [], "render": [], "memory": [], "notes": notes}

    partial = out / "benchmarks.partial.json"
    print("step-time overhead (amortized ratio to the plain loop, interleaved step by step):", flush=True)
    for size in sizes if not args.floor_only else ():
        for family in families:
            results["overhead"].append(run_overhead(workload(family, size, args.device), arms, budget_s=budgets[size], reps=args.reps))
            report.dump({**results, "duration_s": time.time() - started, "load": [load0, os.getloadavg()[0]]}, partial)
    print("memory-bandwidth floor and statistic kernels:", flush=True)
    for size in sizes:
        for family in families:
            f = measure_floor(workload(family, size, args.device), reps=8 if quick else 15)
            results["floor"].append(f)
            print(f"  {f.workload:16s} floor {1000 * f.floor:7.3f} ms ({f.gb_per_s:4.0f} GB/s)  norms {f.norms_ratio:.2f}x  "
                  f"(torch ops {f.torch_ratio:.2f}x)  update {f.update_ratio:.2f}x", flush=True)
    if args.skip_scaling or args.floor_only:
        layers, families_mem = [], []
    else:
        families_mem = families
    print("/metrics and per-sample work vs layers:", flush=True)
    for n in layers:
        r = render_point(n, renders=10 if quick else 25, scrape=n in (250, max(layers)))
        results["render"].append(r)
        print(f"  {n:5d} layers: {r.series:5d} series, render {1000 * r.render_median:.1f} ms, "
              f"agent {1000 * r.sample_seconds:.1f} ms per sampled step", flush=True)
    print("agent memory:", flush=True)
    for family in families_mem:
        mp = memory_point(workload(family, sizes[-1], args.device))
        results["memory"].append(mp)
        print(f"  {mp.workload:16s} copy {mp.copy_bytes / 2**20:.1f} MiB, activation state {mp.activation_state_bytes / 1024:.1f} KiB", flush=True)

    results["duration_s"] = time.time() - started
    results["load"] = [load0, os.getloadavg()[0]]
    if args.update and (out / "benchmarks.json").exists():
        results = _merge(report.load(out / "benchmarks.json"), results)
    report.dump(results, out / "benchmarks.json")
    partial.unlink(missing_ok=True)
    md, png = report.write(results, out)
    print(f"wrote {md}, {png} and {out / 'benchmarks.json'} in {results['duration_s'] / 60:.1f} min", flush=True)
    return 0


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Old results with the rows measured now put in place of theirs (same model, same layer count)."""
    merged = dict(old)
    for key, ident in (("overhead", "workload"), ("floor", "workload"), ("memory", "workload"), ("render", "layers")):
        fresh = {getattr(r, ident): r for r in new[key]}
        rows = [fresh.pop(getattr(r, ident), r) for r in old[key]]
        merged[key] = rows + list(fresh.values())
    rows = [o.workload for o in new["overhead"]] or [f"the floor table ({len(new['floor'])} models)"]
    merged["notes"] = list(old.get("notes") or []) + [
        f"- Rows of {', '.join(rows)} re-measured on {new['started']} "
        f"with `{new['command']}` (load average {new['load'][0]:.1f} / {new['load'][1]:.1f})."]
    merged["duration_s"] = old["duration_s"] + new["duration_s"]
    return merged


if __name__ == "__main__":
    raise SystemExit(main())

"""Turn benchmark results (JSON) into docs/benchmarks.md tables and the docs/benchmarks.png plot.

``python -m benchmarks.report RESULTS.json [OUT_DIR]`` re-renders the docs without rerunning anything.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .arms import LABELS
from .floor import FloorResult
from .overhead import OverheadResult
from .scaling import MemoryPoint, RenderPoint

PEERS = ("wandb_1", "wandb_100", "naive")
COLORS = {"control": "0.6", "agent": "C1", "agent_all": "C2", "wandb_1": "C3", "wandb_100": "C4", "naive": "C5"}
"""One colour per arm across the plot's panels."""


def load(path: Path) -> dict[str, Any]:
    """Read a results file written by benchmarks.run, rebuilding the result records."""
    raw = json.loads(path.read_text())
    raw["overhead"] = [OverheadResult(**o) for o in raw["overhead"]]
    raw["floor"] = [FloorResult(**f) for f in raw["floor"]]
    raw["render"] = [RenderPoint(**r) for r in raw["render"]]
    raw["memory"] = [MemoryPoint(**m) for m in raw["memory"]]
    return raw


def dump(results: dict[str, Any], path: Path) -> None:
    out = dict(results)
    for key in ("overhead", "floor", "render", "memory"):
        out[key] = [asdict(r) for r in results[key]]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Step times are most of the file: 9 significant digits (sub-nanosecond on a step) and one line per list
    # keep it small; JSON strings hold no raw newlines, so only the space between list items is dropped.
    text = json.dumps(_rounded(out), indent=1)
    path.write_text(re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\n\s*", "", m.group(1)) + "]", text))


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.9g}")
    if isinstance(obj, (list, tuple)):
        return [_rounded(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _pct(r: float) -> str:
    return f"{100 * (r - 1):+.1f}%"


def _cell(o: OverheadResult, arm: str) -> str:
    if arm not in o.steps or not o.steps[arm]:
        return "n/a"
    lo, hi = o.interval_95(arm)
    return f"{o.ratio(arm):.3f} <sub>[{lo:.3f}–{hi:.3f}]</sub>"


def _arms(rows: list[OverheadResult]) -> list[str]:
    return [a for a in LABELS if a != "plain" and any(o.steps.get(a) for o in rows)]


def _overhead_table(rows: list[OverheadResult]) -> list[str]:
    arms = _arms(rows)
    out = ["| model | params | plain ms/step | " + " | ".join(LABELS[a] for a in arms) + " | rounds |",
           "|" + "---|" * (len(arms) + 4)]
    for o in rows:
        cells = [_cell(o, a) for a in arms]
        out.append(f"| {o.workload} | {o.params / 1e6:.1f}M | {o.plain_ms():.1f} | " + " | ".join(cells)
                   + f" | {o.reps} x {o.rounds} |")
    return out


def _summary(rows: list[OverheadResult]) -> list[str]:
    out = []
    have = [o for o in rows if o.steps.get("agent")]
    if have:
        direct = [o.ratio("agent") for o in have]
        upper = [o.interval_95("agent")[1] for o in have]
        est = [o.decomposed("agent") for o in have]
        est = [e for e in est if e is not None]
        share = [o.agent_share["agent"] for o in have if "agent" in o.agent_share]
        out.append(f"- nnwatch at default settings: {_pct(min(direct))} to {_pct(max(direct))} step time across "
                   f"the {len(have)} models (median model {_pct(statistics.median(direct))}); within the +2% budget on "
                   f"{sum(r <= 1.02 for r in direct)} of {len(have)}, and the whole 95% interval below +2% on "
                   f"{sum(u <= 1.02 for u in upper)} of {len(have)}.")
        if est:
            out.append(f"- The same arm from its parts (the agent's timed cost of an ordinary step plus the measured "
                       f"excess of its sampled steps): {100 * min(est):+.2f}% to {100 * max(est):+.2f}%; the agent's "
                       f"own measured share, which the overhead budget holds at 1%: {100 * min(share):.2f}% to "
                       f"{100 * max(share):.2f}%.")
    ctrl = [o.ratio("control") for o in rows if o.steps.get("control")]
    if ctrl:
        out.append(f"- The A/A control (a second plain loop) read {ctrl and min(ctrl):.3f} to {max(ctrl):.3f}: the "
                   "resolution of this machine, in the same runs.")
    every = [o.ratio("agent_all") for o in rows if o.steps.get("agent_all")]
    if every:
        out.append(f"- nnwatch with every statistic on every step: {min(every):.2f}x to {max(every):.2f}x.")
    for peer in PEERS:
        vals = [o.ratio(peer) for o in rows if o.steps.get(peer)]
        if vals:
            out.append(f"- {LABELS[peer]}: {min(vals):.2f}x to {max(vals):.2f}x.")
    both = [(o.ratio("agent_all"), o.ratio("wandb_1")) for o in rows if o.steps.get("agent_all") and o.steps.get("wandb_1")]
    if both:
        wins = sum(a < w for a, w in both)
        factor = [(w - 1) / (a - 1) for a, w in both if a > 1]
        extra = f", with {min(factor):.0f}x to {max(factor):.0f}x less added step time" if factor else ""
        out.append(f"- Everything-every-step nnwatch was cheaper than wandb.watch(log_freq=1) on {wins} of {len(both)} "
                   f"models{extra}.")
    peers = [(o.ratio("agent"), o.ratio(p), p) for o in rows for p in ("wandb_100", "naive")
             if o.steps.get("agent") and o.steps.get(p)]
    if peers:
        out.append(f"- Defaults against the cheap peers, model by model: cheaper than wandb.watch(log_freq=100) on "
                   f"{sum(a < b for a, b, p in peers if p == 'wandb_100')} of {sum(p == 'wandb_100' for *_, p in peers)} "
                   f"and than the naive loop on {sum(a < b for a, b, p in peers if p == 'naive')} of "
                   f"{sum(p == 'naive' for *_, p in peers)} (direct ratios).")
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _agent_table(rows: list[OverheadResult]) -> list[str]:
    out = ["| model | defaults, direct | defaults, from its parts | agent-measured share | steps per sample (last interval) | "
           "sampled step, extra ms | ordinary step, agent µs | everything every step, extra ms/step | "
           "slowest step ms: plain / defaults / wandb log_freq=100 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for o in rows:
        if not o.steps.get("agent"):
            continue
        est = o.decomposed("agent")
        share = o.agent_share.get("agent")
        every = o.sampled_extra_ms("agent_all") if o.steps.get("agent_all") else None
        interval = o.sample_interval("agent")
        steps = f"{interval:.0f} ({o.interval.get('agent', '')})" if interval is not None else ""
        slow = " / ".join(f"{o.slowest_ms(a):.0f}" if o.steps.get(a) else "n/a" for a in ("plain", "agent", "wandb_100"))
        cells = [_pct(o.ratio("agent")), _fmt(None if est is None else 100 * est, "+.2f") + ("%" if est is not None else ""),
                 _fmt(None if share is None else 100 * share, ".2f") + ("%" if share is not None else ""), steps,
                 _fmt(o.sampled_extra_ms("agent"), ".1f"), _fmt(o.regular_us("agent"), ".0f"), _fmt(every, ".1f"), slow]
        out.append(f"| {o.workload} | " + " | ".join(cells) + " |")
    return out


def _floor_table(rows: list[FloorResult], overhead: dict[str, OverheadResult]) -> list[str]:
    out = ["| model | params | tensors | floor ms (GB/s) | norms ms (x floor) | torch ops only, ms (x floor) | "
           "floor + one call per tensor, ms | update + weight norms ms (x floor; x its own floor) | "
           "whole sampled step, extra ms (x floor) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for f in rows:
        extra = ""
        o = overhead.get(f.workload)
        if o is not None and o.steps.get("agent_all"):
            d = o.sampled_extra_ms("agent_all")
            if d is not None:
                extra = f"{d:.2f} ({d / 1000 / f.floor:.1f}x)"
        out.append(f"| {f.workload} | {f.params / 1e6:.1f}M | {f.tensors} | {1000 * f.floor:.3f} ({f.gb_per_s:.0f}) | "
                   f"{1000 * f.norms:.3f} ({f.norms_ratio:.2f}x) | {_fmt(1000 * f.norms_torch, '.3f')} ({_fmt(f.torch_ratio, '.2f')}x) | "
                   f"{1000 * (f.floor + f.calls):.3f} | "
                   f"{1000 * f.update:.3f} ({f.update_ratio:.2f}x; {f.update_own_ratio:.2f}x) | {extra} |")
    return out


def _render_table(rows: list[RenderPoint]) -> list[str]:
    out = ["| layers | series | series with a module label | render median ms | render p90 ms | HTTP scrape ms | agent ms per sampled step |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        scrape = f"{1000 * r.scrape_median:.1f}" if r.scrape_median is not None else ""
        out.append(f"| {r.layers} | {r.series} | {r.module_series} | {1000 * r.render_median:.1f} | "
                   f"{1000 * r.render_p90:.1f} | {scrape} | {1000 * r.sample_seconds:.1f} |")
    return out


def _memory_table(rows: list[MemoryPoint]) -> list[str]:
    out = ["| model | params | weights | update-norm scratch copy | activation state (sites) |", "|---|---|---|---|---|"]
    for m in rows:
        out.append(f"| {m.workload} | {m.params / 1e6:.1f}M | {_mb(m.weight_bytes)} | {_mb(m.copy_bytes)} | "
                   f"{m.activation_state_bytes / 1024:.1f} KiB ({m.sites}) |")
    return out


def markdown(results: dict[str, Any], png_name: str = "benchmarks.png") -> str:
    """The benchmark document: machine, method, tables and the plot."""
    m = results["machine"]
    overhead: list[OverheadResult] = results["overhead"]
    by_name = {o.workload: o for o in overhead}
    lines = [
        "# Benchmarks: what watching a training run costs",
        "",
        f"Generated by `{results['command']}` on {results['started']} ({results['mode']} run, "
        f"{results['duration_s'] / 60:.1f} min). Regenerate with `make bench` (about an hour) or "
        "`python -m benchmarks.run --quick` (about 4 minutes, written to benchmarks/out/); "
        "`python -m benchmarks.report docs/benchmarks.json` re-renders this page from the raw results.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, torch intra-op threads: {m['torch_threads']}; "
        f"memory {m['memory_gib']:.0f} GiB; {m['os']}",
        f"- Python {m['python']}, torch {m['torch']}, nnwatch {m['nnwatch']}, wandb {m['wandb'] or 'not installed'}",
        f"- nnwatch native CPU kernels (agent.collect.native): {m.get('native') or 'not recorded (before they existed)'}",
        f"- Allocator: {m.get('allocator') or 'not recorded'}. By default glibc maps every allocation above 32 MiB "
        "afresh and unmaps it on free, so each step of a 64M-parameter model faults in about 770 MB of new pages "
        "(half its step time here, and wandering by +-10% between model copies on this VM); kept memory is what "
        "a caching allocator (jemalloc, tcmalloc) gives anyway (benchmarks/allocator.py, `--system-allocator` "
        "to leave it).",
        f"- GPU: {m['cuda'] or 'none. No GPU machine was available for this work, so there are no CUDA figures; the harness measures the CPU training loop and runs unchanged on CUDA.'}",
        f"- 1-minute load average before/after: {results['load'][0]:.1f} / {results['load'][1]:.1f}. This is a "
        "2-core virtual machine whose speed wanders: two identical training loops stepped in turn differ by about "
        "12% from one step to the next, which is why the method below interleaves single steps, repeats with "
        "fresh allocations, reports 95% intervals and carries an A/A control.",
        "",
        "## Method",
        "",
        "Every arm trains its own copy of the same model (same seed, same batches, AdamW) in one process. A round "
        "runs one training step of each arm in an order shuffled every round, and each arm's step is paired with "
        "the plain loop's step of the same round. An arm's figure is its amortized ratio: the sum of its step "
        "times over the sum of the paired plain steps, so rare expensive steps (the agent's sampled steps, wandb's "
        "logging steps) count exactly as often as they happen; the bracket is a 95% bootstrap interval over chunks "
        "of up to 20 consecutive steps. The run is split into repetitions that build every arm afresh, in a shuffled order, because "
        "where a small model's memory lands moves its step time by a percent or two; `plain loop again` is a "
        "second, identical plain loop (an A/A control) that shows what no difference reads as on this machine. "
        "Arms whose every step costs the same run every 4th round; wandb's `log_freq=100` arm every 2nd, and its "
        "figure is `(99 * ordinary step + logging step) / 100` from its own step count, so that it does not "
        "depend on how many logging steps a window happens to contain.",
        "",
        "Arms: the plain loop; `nnwatch defaults` (`agent.attach(model, opt, port=None)`: a sample every 10 "
        "steps, stretched by the default `overhead_budget=0.01` until the agent's own measured time is at most 1% "
        "of step time); `everything every step` (`sample_every=1`: norms, update ratios, activation statistics, "
        "checks on every step); `wandb.watch(model, log=\"all\", log_freq=1)` and `log_freq=100` in offline mode "
        "(one run, one watch per model, no `wandb.log` calls: the peer at its cheapest); a hand-written loop "
        "calling `p.grad.norm().item()` and `p.norm().item()` for every parameter after backward. The agent arms "
        "build the Monitor that `attach` builds, with a step clock that is paused while other arms run.",
        "",
        "## Step-time ratio to the plain loop",
        "",
        *_summary(overhead),
        "",
        *_overhead_table(overhead),
        "",
        "### The defaults, part by part",
        "",
        "A direct ratio of a cheap arm carries this machine's noise: about a percent at the sizes run here, as the "
        "control arm shows. The agent's cost has a simple structure, so its parts are shown too: the agent's own "
        "timed cost of an ordinary step (its hooks), the mean wall-time excess of a sampled step over the paired "
        "plain step (so it includes what no agent timer sees: the activation probe's dispatch inside the forward), "
        "and the measured steps per sample; `from its parts` is `(ordinary + extra / steps per sample) / plain step`. "
        "It leaves out that the few steps right after a sample run slightly slower (allocator and cache effects; "
        "measured separately on cnn-1M: +2.4% [0.8–4.2%] on each of the 3 steps after a sample, over 54 samples, "
        "about +0.3% of the total at its interval). `agent-measured share` is what the agent itself reports as "
        "`nnwatch_agent_overhead_ratio` and what its overhead budget acts on; the last interval the budget settled "
        "on is in brackets.",
        "",
        *_agent_table(overhead),
        "",
        f"![overhead, floor and scaling]({png_name})",
        "",
        "## Statistics against the memory-bandwidth floor",
        "",
        "Floor: one read of every gradient and weight (8 bytes per parameter) as a single dot product over a flat "
        "buffer holding all of them. `norms` is what the agent runs on a sampled step for gradient and weight norms "
        "(`agent.collect.stats.squared_norm_vector`: the same 8 bytes per parameter; on CPU with the native kernels one call "
        "for the whole list, see the Machine section for whether they were built); the budget is 1.5x the floor. "
        "`torch ops only` is the same through one torch dot product per tensor, the path without a C++ compiler: "
        "a model's tensors are separate allocations, and on CPU each torch call costs about a microsecond before any "
        "data moves, which the next column adds to the floor (the model's number of tensors times a one-element dot "
        "product). `update + weight norms` is the exact update measurement with the weight norm after the step: copy "
        "the weights before the optimizer step, then one pass over weights and copy "
        "(`agent.collect.stats.update_squared_norm_vectors`); its own floor is the same copy and read on flat buffers. "
        "Before every timed call a 16 MiB scratch buffer is read (benchmarks/floor.py `SCRUB_BYTES`), so that each "
        "call starts with its data out of the cores' L2 caches whatever ran before it; the 1M models' data are "
        "about the size of those caches, and without it their figures depend on the order of the calls. "
        "The last column is the whole extra time of an everything-every-step step over a plain "
        "one (kernels, activation probes, the host copy, snapshot, checks), from the runs above. Kernel times are "
        "minima over interleaved repetitions.",
        "",
        *_floor_table(results["floor"], by_name),
        "",
        "## How cost grows with the number of layers",
        "",
        "Models of N parallel Linear+ReLU branches (width 16). Series: every sample line of /metrics. The default cap "
        "(`max_modules=200`) bounds per-module series, so the series count and the render time level off; "
        "the agent's own per-sample work stays proportional to layers (it measures every layer; only export is capped).",
        "",
        *_render_table(results["render"]),
        "",
        "## The agent's memory",
        "",
        "What the agent holds besides host scalars: the scratch copy for exact update norms (one copy of the weights "
        "measured, kept between sampled steps on CPU to avoid page faults, at most `update_copy_max_bytes` = 512 MiB "
        "plus the largest tensor; on CUDA it is allocated per sampled step from the caching allocator and returned), "
        "and one int64 per activation unit for the dead-unit window. Snapshots and the check history are host floats "
        "(64 snapshots of one record per layer).",
        "",
        *_memory_table(results["memory"]),
        "",
        "## Reading the numbers",
        "",
        "- Between samples the agent runs four light hooks (root forward pre/post, optimizer step pre/post) and "
        "`monitor.log()` keeps the loss on the device; the ordinary-step column is their cost as the agent times it. "
        "A sampled step adds gradient and weight norms, the update-norm copy, activation statistics, one batched "
        "device-to-host copy, the snapshot and the checks: the sampled-step column. The overhead is about "
        "`ordinary + sampled extra / steps per sample`, as a share of the step.",
        "- The default carries an overhead budget of 1% (`overhead_budget`, `NNWATCH_OVERHEAD_BUDGET`): the agent "
        "measures its own time on the training thread, including an estimate of the probe's untimed work inside "
        "sampled forwards (a sampled forward against the median of recent unsampled ones), and stretches the "
        "interval beyond `sample_every` until the share fits. Models whose sampled step costs little against ten "
        "steps keep the interval of 10; small, fast models are sampled less often. `nnwatch_sample_interval_steps` "
        "and `nnwatch_agent_overhead_ratio` show both live.",
        "- Host-device synchronisation: none between samples, exactly one batched copy per sampled step "
        "(`tests/test_sync.py` counts every `item`/`tolist`/`cpu`/`bool`/`float` the agent makes, step by step, "
        "and runs the CUDA path under `torch.cuda.set_sync_debug_mode(\"error\")` where a GPU exists). A run that is "
        "already broken pays one more copy for exact NaN/Inf counts.",
        "- Peers: `wandb.watch(log=\"all\", log_freq=1)` clones and histograms every tensor and reads it on the host, "
        "every step. At `log_freq=100` it concentrates that cost in one slow step in a hundred (the slowest-step "
        "column) and runs a service process next to the job. The naive per-parameter `.item()` loop forces a host "
        "sync per tensor per step.",
        "",
    ]
    notes = results.get("notes")
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def _bars(ax: Any, rows: list[OverheadResult], arms: list[str], percent: bool) -> None:
    """Grouped bars of each arm's ratio per model with its 95% interval (as added percent if ``percent``)."""
    width = 0.8 / max(1, len(arms))
    xs = range(len(rows))
    for k, a in enumerate(arms):
        vals, err = [], [[], []]
        for o in rows:
            if o.steps.get(a):
                r = o.ratio(a)
                lo, hi = o.interval_95(a)
                scale, shift = (100, 1) if percent else (1, 0)
                vals.append(scale * (r - shift))
                err[0].append(scale * max(0.0, r - lo))
                err[1].append(scale * max(0.0, hi - r))
            else:
                vals.append(math.nan)
                err[0].append(0.0)
                err[1].append(0.0)
        ax.bar([x + k * width for x in xs], vals, width, yerr=err, label=LABELS[a], color=COLORS.get(a),
               error_kw={"lw": 0.6})
    ax.set_xticks([x + 0.4 - width / 2 for x in xs], [o.workload for o in rows], rotation=60, ha="right", fontsize=7)


def plot(results: dict[str, Any], path: Path) -> None:
    """Six panels: every arm's ratio, the cheap arms in percent, kernel times vs parameters, series and
    render time vs layers, per-sample work vs layers, the defaults' measured vs self-reported cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overhead: list[OverheadResult] = results["overhead"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    ax = axes[0][0]
    _bars(ax, overhead, _arms(overhead), percent=False)
    ax.set_yscale("log")
    ax.set_ylabel("step time / plain loop (amortized)")
    ax.set_title("Every arm: step-time ratio, 95% intervals", fontsize=9)
    ax.legend(fontsize=6)

    ax = axes[0][1]
    cheap = [a for a in ("control", "agent", "wandb_100", "naive") if any(o.steps.get(a) for o in overhead)]
    _bars(ax, overhead, cheap, percent=True)
    ax.axhline(2.0, color="k", lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_ylabel("added step time, % (95% interval)")
    ax.set_title("The cheap arms (dashed: the +2% budget)", fontsize=9)
    ax.legend(fontsize=6)

    ax = axes[0][2]
    floors = sorted(results["floor"], key=lambda f: f.params)
    p = [f.params / 1e6 for f in floors]
    ax.loglog(p, [1000 * f.floor for f in floors], "k.-", label="floor: read grads+weights once")
    ax.loglog(p, [1000 * (f.floor + f.calls) for f in floors], "k:", label="floor + one call per tensor")
    ax.loglog(p, [1000 * f.norms for f in floors], "o", label="agent norms (grads+weights)")
    if any(f.norms_torch == f.norms_torch for f in floors):  # not NaN: measured
        ax.loglog(p, [1000 * f.norms_torch for f in floors], "x", color="C0", label="the same, torch ops only")
    ax.loglog(p, [1000 * f.update for f in floors], "s", label="agent update + weight norms (copy + fused pass)")
    ax.loglog(p, [1000 * f.update_floor for f in floors], "--", color="C1", label="their floor: flat copy + read")
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("ms")
    ax.set_title("Statistic time vs parameters", fontsize=9)
    ax.legend(fontsize=6)

    render = results["render"]
    ax = axes[1][0]
    ax.plot([r.layers for r in render], [r.series for r in render], "o-", label="series")
    ax.set_xlabel("layers")
    ax.set_ylabel("series on /metrics")
    ax2 = ax.twinx()
    ax2.plot([r.layers for r in render], [1000 * r.render_median for r in render], "s--", color="C1", label="render ms")
    ax2.set_ylabel("render ms (median)")
    ax.set_title("/metrics vs layers (max_modules=200)", fontsize=9)

    ax = axes[1][1]
    ax.plot([r.layers for r in render], [1000 * r.sample_seconds for r in render], "o-")
    ax.set_xlabel("layers")
    ax.set_ylabel("agent ms per sampled step")
    ax.set_title("Per-sample bookkeeping vs layers", fontsize=9)

    ax = axes[1][2]
    rows = [o for o in overhead if o.steps.get("agent")]
    xs = list(range(len(rows)))
    direct = [100 * (o.ratio("agent") - 1) for o in rows]
    lo = [100 * (o.ratio("agent") - o.interval_95("agent")[0]) for o in rows]
    hi = [100 * (o.interval_95("agent")[1] - o.ratio("agent")) for o in rows]
    parts = [100 * (o.decomposed("agent") or math.nan) for o in rows]
    share = [100 * o.agent_share.get("agent", math.nan) for o in rows]
    ax.errorbar(xs, direct, yerr=[lo, hi], fmt="o", capsize=2, label="measured (direct, 95% interval)")
    ax.plot(xs, parts, "s", label="from its parts")
    ax.plot(xs, share, "x", label="agent-measured share (budget 1%)")
    ax.axhline(2.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(xs, [o.workload for o in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("% of step time")
    ax.set_title("nnwatch defaults: measured vs self-reported", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write benchmarks.md and benchmarks.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, png = out_dir / "benchmarks.md", out_dir / "benchmarks.png"
    try:
        plot(results, png)
    except ImportError:
        results.setdefault("notes", []).append(
            "- matplotlib is not installed here, so no plot was drawn (`pip install -r benchmarks/requirements.txt`).")
    kept = ""
    if md.exists():  # the section benchmarks.scrapes owns stays
        old = md.read_text()
        begin, end = "<!-- scrapes:begin -->", "<!-- scrapes:end -->"
        if begin in old and end in old:
            kept = "\n" + old[old.index(begin): old.index(end) + len(end)] + "\n"
    md.write_text(markdown(results, png.name).rstrip("\n") + "\n" + kept)
    return md, png


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m benchmarks.report RESULTS.json [OUT_DIR]", file=sys.stderr)
        return 2
    results = load(Path(args[0]))
    md, png = write(results, Path(args[1]) if len(args) > 1 else Path("docs"))
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The fleet alerts only Prometheus can evaluate: an exporter that cannot be scraped, ranks whose weights
differ, a straggler rank, a throughput drop, GPU memory near capacity."""

from __future__ import annotations

from typing import Any, Callable

from .rule_model import NUM, WHERE, Rule

def _exporter_down(c: Any) -> str:
    sel = c.target_selector
    parts = [f"up{{{sel}}} == 0", f"(up{{{sel}}} == 1 unless on(job, instance) nnwatch_build_info)"]
    parts += [f'absent(up{{job="{job}"}})' for job in c.expected_jobs]
    return "\nor\n".join(parts)


def _vs_median(c: Any, series: str) -> str:
    """The median over the ranks of one run, matched back to each rank."""
    return f"on({c.run_labels}) group_left\n  quantile by ({c.run_labels}) (0.5, {series})"


def _rank_desync(c: Any) -> str:
    # The fingerprint is taken at the same step on every rank; latest norms are not (scrapes are not steps).
    # |s / median - 1| is |s - median| / median with the median of the ranks computed once, not twice.
    s = c.m("nnwatch_weight_fingerprint", 'rank!=""')
    return f"abs(\n  {s}\n  / {_vs_median(c, s)}\n  - 1\n)\n> {c.param('rank_desync.tolerance')}"


def _straggler(c: Any) -> str:
    g, factor = c.run_labels, c.param("straggler_rank.factor")
    work, step = 'nnwatch:rank_work_seconds:mean5m{rank!=""}', 'nnwatch:step_seconds:mean5m{rank!=""}'
    return (f"{work}\n  > on({g}) group_left\n  {factor} * quantile by ({g}) (0.5, {work})\nor\n"
            f"(\n  {step}\n    > on({g}) group_left\n    {factor} * quantile by ({g}) (0.5, {step})\n"
            f"  unless {work}\n)")


def _throughput(c: Any) -> str:
    ratio, window = c.param("throughput_drop.ratio"), c.param("throughput_drop.window")
    t = "nnwatch:throughput:rate5m"
    return f"{t} < {ratio} * quantile_over_time(0.5, {t}[{window}])"


def _gpu(tier: str) -> Callable[[Any], str]:
    def expr(c: Any) -> str:
        return (f"{c.m('nnwatch_gpu_memory_used_bytes')} / {c.m('nnwatch_gpu_memory_total_bytes')} "
                f"> {c.param(f'gpu_memory_near_capacity.{tier}_ratio')}")
    return expr


def _fleet_rules() -> list[Rule]:
    pct = "{{ $value | humanizePercentage }}"
    gpu_desc = f"GPU {{{{ $labels.device }}}} of {WHERE} is {pct} full."
    return [
        Rule("NNWatchExporterDown", "NNWatchExporterDown", "critical", "The nnwatch exporter of a training job cannot be scraped.",
             "5m", _exporter_down,
             lambda c: "{{ if eq $value 0.0 }}Target {{ $labels.instance }} of job {{ $labels.job }} is down (scrapes fail)"
                       "{{ else }}Job {{ $labels.job }}{{ with $labels.instance }} on {{ . }}{{ end }} serves no nnwatch "
                       "metrics{{ end }}.",
             "raw: up == 0 for targets selected by target_selector, or up == 1 without nnwatch_build_info (the "
             "agent is not attached or serves another port), or up absent for each of expected_jobs.",
             value="{{ $value }}"),
        Rule("NNWatchRankDesync", "NNWatchRankDesync", "warning", "The weights of distributed ranks differ.",
             "10m", _rank_desync,
             lambda c: f"the weight fingerprint of {WHERE} deviates {pct} from the median of the ranks of its run.",
             "raw: nnwatch_weight_fingerprint of every rank (the global weight norm taken at the same step on every "
             "rank) against the median of the ranks of the same run (run_labels).", value=pct),
        Rule("NNWatchStragglerRank", "NNWatchStragglerRank", "warning", "One rank is much slower than the others.",
             "15m", _straggler,
             lambda c: f"{WHERE} needs {{{{ $value | humanizeDuration }}}} per step for its own work, over "
                       f"{c.param('straggler_rank.factor')}x the median of the ranks of its run.",
             "raw: recording rule nnwatch:rank_work_seconds:mean5m (forward and input-wait time per step: a rank's "
             "own work, since in DDP the gradient all-reduce makes every rank's step equally long) against the "
             "median of the ranks; nnwatch:step_seconds:mean5m where the agent does not export the split.",
             value="{{ $value | humanizeDuration }}"),
        Rule("NNWatchThroughputDrop", "NNWatchThroughputDrop", "warning", "Training throughput dropped far below its recent level.",
             "15m", _throughput,
             lambda c: f"throughput of {WHERE} fell to {NUM}/s, below "
                       f"{c.param('throughput_drop.ratio')} of its median over {c.param('throughput_drop.window')}.",
             "raw: recording rule nnwatch:throughput:rate5m (samples/s, or steps/s where samples are not "
             "counted) against its own median.", value=NUM + "/s"),
        Rule("NNWatchGPUMemoryNearCapacity", "NNWatchGPUMemoryNearCapacity", "warning", "GPU memory is nearly full.",
             "15m", _gpu("warning"), lambda c: gpu_desc,
             "raw: nnwatch_gpu_memory_used_bytes / nnwatch_gpu_memory_total_bytes (NVML, all processes).", value=pct),
        Rule("NNWatchGPUMemoryNearCapacityCritical", "NNWatchGPUMemoryNearCapacity", "critical", "GPU memory is nearly full.",
             "5m", _gpu("critical"), lambda c: gpu_desc,
             "raw: as the warning, at the paging ratio (out of memory is imminent).", value=pct),
    ]


__all__ = ["_fleet_rules"]

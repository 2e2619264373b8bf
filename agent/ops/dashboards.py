"""Grafana dashboards of nnwatch: built from code and written as classic dashboard JSON.

Two dashboards with stable uids are built with Grafana's ``grafana-foundation-sdk`` (a generation-time
dependency only; the JSON is committed): ``nnwatch-overview`` (every job at a glance) and
``nnwatch-training`` (the health of one job, layer by layer). ``generate(root)`` writes them to
``dashboards/``; ``agent.ops.chart`` copies them into the Helm chart and ``agent.ops.grafana_push`` uploads them to a
running Grafana (which also registers ``nnwatch dashboards push|generate``).

Every query selects ``job=~"$job", instance=~"$instance", rank=~"$rank"``: the variables' "All" value is
``.*``, which also matches a series without the label, so single-process jobs (no ``rank``) show data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .panels import ALERTS_EXPR, Q, _Builder, _timeseries, _stat, _bargauge, _heatmap, _table, _ratio_steps

OVERVIEW_UID = "nnwatch-overview"
TRAINING_UID = "nnwatch-training"
FILES = {OVERVIEW_UID: "nnwatch-overview.json", TRAINING_UID: "nnwatch-training.json"}
"""Dashboard uid -> file name under dashboards/ (and helm/nnwatch/dashboards/)."""
FOLDER_UID = "nnwatch"
FOLDER_TITLE = "nnwatch"

SEL = 'job=~"$job", instance=~"$instance", rank=~"$rank"'
"""Label matchers of every panel query (regex matchers: "All" is ``.*`` and matches an absent label)."""
MOD = SEL + ', module=~"$module"'
"""SEL plus the module variable, for per-layer and per-activation series."""
LEAK_WINDOW = "10m"
"""Window of the memory growth slope (deriv); long enough to smooth allocator noise."""


def overview() -> dict[str, Any]:
    """The fleet dashboard: every training process, its findings, loss, throughput, memory and liveness."""
    who = "{{job}} {{instance}} {{rank}}"
    b = _Builder(OVERVIEW_UID, "nnwatch / Overview",
                 "Every training job watched by nnwatch: firing checks, loss, throughput, memory and liveness.",
                 ("job", "instance", "rank"))
    b.row("Health at a glance")
    b.add(_stat(), "Training processes",
          "Training processes exporting nnwatch metrics now (one per rank in distributed jobs).", "none",
          [Q(f"count(nnwatch_build_info{{{SEL}}})", "processes", instant=True)], width=5, height=4)
    b.add(_stat((None, "green"), (1, "orange")), "Firing checks",
          "Checks firing inside the agents now (nnwatch_finding_active), all severities.", "none",
          [Q(f"sum(nnwatch_finding_active{{{SEL}}}) or vector(0)", "firing", instant=True)], width=5, height=4)
    b.add(_stat((None, "green"), (1, "red")), "Critical findings",
          "Critical checks firing now (non-finite values, stalled training): these page.", "none",
          [Q(f'sum(nnwatch_finding_active{{{SEL}, severity="critical"}}) or vector(0)', "critical", instant=True)],
          width=5, height=4)
    b.add(_stat((None, "green"), (1, "orange")), "Firing alerts",
          "nnwatch alerts firing in Prometheus (from alerts/nnwatch.rules.yml), fleet rules included.", "none",
          [Q('count(ALERTS{alertname=~"NNWatch.*", alertstate="firing", job=~"$job"}) or vector(0)', "alerts",
             instant=True)], width=4, height=4)
    b.add(_stat((None, "green"), (120, "orange"), (600, "red")), "Oldest last step",
          "Seconds since the slowest process completed its last step; a hung job (NCCL, data loader) grows here.",
          "s", [Q(f"max(time() - nnwatch_last_step_timestamp_seconds{{{SEL}}})", "age", instant=True)],
          width=5, height=4)
    b.row("Jobs")
    b.add(_table(), "Firing checks by job and rank",
          "One row per firing check: job, instance, rank, check, severity and the module (empty for model-wide "
          "checks). The runbook of each check is in docs/runbooks.md.", "none",
          [Q(f"sum by (job, instance, rank, check, severity, module) (nnwatch_finding_active{{{SEL}}})",
             instant=True, table=True)], width=14, height=8)
    b.add(_bargauge(0, None, (None, "green"), (120, "orange"), (600, "red")), "Seconds since last step",
          "Age of the last completed step per process; the training_stalled alert fires when it is far above the "
          "usual step time.", "s",
          [Q(f"time() - max by (job, instance, rank) (nnwatch_last_step_timestamp_seconds{{{SEL}}})", who,
             instant=True)], width=10, height=8)
    b.add(_timeseries(), "Training loss",
          "Mean training loss logged between sampled steps, per process.", "none",
          [Q(f"nnwatch_loss{{{SEL}}}", who)])
    b.add(_timeseries(), "Steps per second",
          "Optimizer steps per second per process (rate of nnwatch_steps_total).", "suffix: steps/s",
          [Q(f"sum by (job, instance, rank) (rate(nnwatch_steps_total{{{SEL}}}[$__rate_interval]))", who)])
    b.add(_timeseries(), "Samples per second",
          "Training samples per second per process (first dimension of the model input).", "suffix: samples/s",
          [Q(f"sum by (job, instance, rank) (rate(nnwatch_samples_total{{{SEL}}}[$__rate_interval]))", who)])
    b.add(_timeseries(), "Mean step time",
          "Wall time per training step, averaged over the rate window; one slow rank stalls every rank in DDP.",
          "s", [Q(f"rate(nnwatch_step_time_seconds_total{{{SEL}}}[$__rate_interval]) / "
                  f"rate(nnwatch_steps_total{{{SEL}}}[$__rate_interval])", who)])
    b.add(_timeseries(), "Host memory (RSS)",
          "Resident set size of each training process, read at the step boundary.", "bytes",
          [Q(f"nnwatch_host_resident_memory_bytes{{{SEL}}}", who)])
    b.add(_timeseries(), "GPU memory allocated",
          "Bytes held by tensors in the CUDA caching allocator per device (no data on CPU-only jobs).", "bytes",
          [Q(f"nnwatch_cuda_memory_allocated_bytes{{{SEL}}}", who + " {{device}}")])
    b.add(_timeseries(), "GPU memory used of capacity",
          "Device memory in use as a share of the GPU's capacity (NVML; no data without a GPU).", "percentunit",
          [Q(f"nnwatch_gpu_memory_used_bytes{{{SEL}}} / nnwatch_gpu_memory_total_bytes{{{SEL}}}",
             who + " {{device}}")])
    b.add(_timeseries(), "Agent overhead",
          "Time the agent spent on the training thread as a share of step time (budget: 2% at default settings).",
          "percentunit", [Q(f"nnwatch_agent_overhead_ratio{{{SEL}}}", who)])
    return b.to_dict()


def training() -> dict[str, Any]:
    """The per-job dashboard: loss, optimisation, gradients, activations, numerics, memory and the agent."""
    who = "{{instance}} {{rank}}"
    layer = "{{module}} {{instance}} {{rank}}"
    b = _Builder(TRAINING_UID, "nnwatch / Training health",
                 "Health of one training job layer by layer: the signals behind every nnwatch check.",
                 ("job", "instance", "rank", "module"))
    b.row("Findings")
    b.add(_table(), "Firing findings",
          "Checks firing inside the agent now: check, severity and module (empty for model-wide checks). "
          "Each check has a runbook section in docs/runbooks.md.", "none",
          [Q(f"max by (job, instance, rank, check, severity, module) (nnwatch_finding_active{{{SEL}}})",
             instant=True, table=True)], width=12, height=7)
    b.add(_stat(), "Global step",
          "Current global training step (continues across restarts from a checkpoint).", "none",
          [Q(f"max(nnwatch_step{{{SEL}}})", "step", instant=True)], width=4, height=7)
    b.add(_stat((None, "green"), (120, "orange"), (600, "red")), "Last step age",
          "Seconds since the last completed step of the slowest selected process.", "s",
          [Q(f"max(time() - nnwatch_last_step_timestamp_seconds{{{SEL}}})", "age", instant=True)],
          width=4, height=7)
    b.add(_stat(), "Initial loss vs expected",
          "First logged loss and the loss expected at initialisation (ln(num_classes)); far apart means a bad "
          "final-layer init or wrong loss inputs.", "none",
          [Q(f"max(nnwatch_initial_loss{{{SEL}}})", "initial", instant=True),
           Q(f"max(nnwatch_expected_initial_loss{{{SEL}}})", "expected", instant=True)], width=4, height=7)

    b.row("Loss and optimisation")
    b.add(_timeseries(), "Loss",
          "Mean training loss between sampled steps and the last validation loss; validation rising while "
          "training falls is overfitting.", "none",
          [Q(f"nnwatch_loss{{{SEL}}}", "train " + who), Q(f"nnwatch_validation_loss{{{SEL}}}", "validation " + who)])
    b.add(_timeseries(log=True), "Learning rate",
          "Learning rate of each optimizer param group (log scale); a flat 0 fires learning_rate_zero.", "none",
          [Q(f"nnwatch_learning_rate{{{SEL}}}", "group {{param_group}} " + who)])
    b.add(_timeseries(log=True), "Update / weight ratio",
          "Update L2 norm over weight L2 norm across a sampled optimizer step, model-wide and per layer "
          "(healthy near 1e-3; far above: learning rate too high, far below: too low).", "none",
          [Q(f"nnwatch_global_update_ratio{{{SEL}}}", "model " + who), Q(f"nnwatch_update_ratio{{{MOD}}}", layer)])
    b.add(_timeseries(), "Left-over gradient at backward",
          "Gradient norm already present when the first backward after an optimizer step began: above 0 "
          "means optimizer.zero_grad() is missing.", "none",
          [Q(f"nnwatch_uncleared_gradient_norm{{{SEL}}}", who)])

    b.row("Gradients and weights")
    b.add(_timeseries(log=True), "Gradient norm (model)",
          "L2 norm of all gradients (log scale); spikes far above the rolling median fire exploding_gradients.",
          "none", [Q(f"nnwatch_global_gradient_norm{{{SEL}}}", who)])
    b.add(_timeseries(log=True), "Gradient norm per layer",
          "L2 norm of each layer's gradients (log scale); a layer far below the rest gets no learning signal.",
          "none", [Q(f"nnwatch_gradient_norm{{{MOD}}}", layer)])
    b.add(_timeseries(), "Weight norm per layer",
          "L2 norm of each layer's trainable weights, with the model total; steady growth can mean a learning "
          "rate too high or no weight decay.", "none",
          [Q(f"nnwatch_weight_norm{{{MOD}}}", layer), Q(f"nnwatch_global_weight_norm{{{SEL}}}", "model " + who)])
    b.add(_bargauge(0, None, (None, "green"), (1, "red")), "Parameters without gradient",
          "Trainable parameter tensors per layer whose .grad stayed None through backward (the layer is not "
          "used in forward).", "none",
          [Q(f"nnwatch_parameters_without_gradient{{{MOD}}}", layer, instant=True)])

    b.row("Activations")
    b.add(_bargauge(0, 1, *_ratio_steps()), "Dead units now",
          "Fraction of each activation's units never positive over the dead window (ReLU family); the "
          "dead_units check fires at 50%.", "percentunit",
          [Q(f"nnwatch_activation_dead_ratio{{{MOD}}}", "{{module}} ({{activation}}) {{instance}} {{rank}}",
             instant=True)])
    b.add(_heatmap(), "Dead units over time",
          "Dead-unit fraction per activation over time: one row per layer, darker is more dead units.",
          "percentunit", [Q(f"nnwatch_activation_dead_ratio{{{MOD}}}", "{{module}} {{rank}}")])
    b.add(_bargauge(0, 1, *_ratio_steps()), "Saturated outputs now",
          "Fraction of each tanh/sigmoid-family activation's outputs in its flat region; the "
          "saturated_activations check fires at 50%.", "percentunit",
          [Q(f"nnwatch_activation_saturated_ratio{{{MOD}}}", "{{module}} ({{activation}}) {{instance}} {{rank}}",
             instant=True)])
    b.add(_heatmap(), "Saturation over time",
          "Saturated-output fraction per activation over time: one row per layer, darker is more saturated.",
          "percentunit", [Q(f"nnwatch_activation_saturated_ratio{{{MOD}}}", "{{module}} {{rank}}")])

    b.row("Numerics")
    b.add(_timeseries(), "Non-finite values by tensor kind",
          "NaN/Inf elements on the last sampled step in gradients, weights, activations and the loss; any value "
          "above 0 fires the critical nonfinite_values alert.", "none",
          [Q(f"sum by (job, instance, rank, tensor) (nnwatch_global_nonfinite_elements{{{SEL}}})",
             "{{tensor}} " + who)])
    b.add(_timeseries(), "Non-finite values per layer",
          "NaN/Inf elements per layer and tensor kind on the last sampled step: the first layer to turn "
          "non-finite is usually the culprit.", "none",
          [Q(f"sum by (job, instance, rank, module, tensor) (nnwatch_nonfinite_elements{{{MOD}}})",
             "{{module}} {{tensor}} {{rank}}")])

    b.row("Memory")
    b.add(_timeseries(), "Host memory (RSS)",
          "Resident set size of the training process at the step boundary.", "bytes",
          [Q(f"nnwatch_host_resident_memory_bytes{{{SEL}}}", who)])
    b.add(_timeseries(), "Host memory growth (leak slope)",
          f"Slope of RSS over the last {LEAK_WINDOW} (deriv, bytes per second); steadily above 0 after warmup "
          "is a leak, e.g. loss tensors kept with their graph.", "Bps",
          [Q(f"deriv(nnwatch_host_resident_memory_bytes{{{SEL}}}[{LEAK_WINDOW}])", who)])
    b.add(_timeseries(), "CUDA allocator",
          "Bytes held by tensors, reserved by the caching allocator and the peak, per device (GPU jobs only).",
          "bytes",
          [Q(f"nnwatch_cuda_memory_allocated_bytes{{{SEL}}}", "allocated {{device}} " + who),
           Q(f"nnwatch_cuda_memory_reserved_bytes{{{SEL}}}", "reserved {{device}} " + who),
           Q(f"nnwatch_cuda_memory_peak_allocated_bytes{{{SEL}}}", "peak {{device}} " + who)])
    b.add(_timeseries(), "CUDA memory growth (leak slope)",
          f"Slope of CUDA allocated bytes over the last {LEAK_WINDOW} (deriv, bytes per second); GPU jobs only.",
          "Bps", [Q(f"deriv(nnwatch_cuda_memory_allocated_bytes{{{SEL}}}[{LEAK_WINDOW}])", "{{device}} " + who)])
    b.add(_timeseries(), "GPU memory used (NVML)",
          "Device memory in use and the device's capacity as NVML reports them (other processes included).",
          "bytes",
          [Q(f"nnwatch_gpu_memory_used_bytes{{{SEL}}}", "used {{device}} " + who),
           Q(f"nnwatch_gpu_memory_total_bytes{{{SEL}}}", "capacity {{device}} " + who)])

    b.row("Performance and agent")
    b.add(_timeseries(), "Step time",
          "Wall time of the last step and the mean over the rate window.", "s",
          [Q(f"nnwatch_step_duration_seconds{{{SEL}}}", "last " + who),
           Q(f"rate(nnwatch_step_time_seconds_total{{{SEL}}}[$__rate_interval]) / "
             f"rate(nnwatch_steps_total{{{SEL}}}[$__rate_interval])", "mean " + who)])
    b.add(_timeseries(), "Samples per second",
          "Training samples per second over the last step.", "suffix: samples/s",
          [Q(f"nnwatch_samples_per_second{{{SEL}}}", who)])
    b.add(_timeseries(), "Forward time and input wait per step",
          "Per rank: seconds per step inside training forward passes (the rank's own work) and waiting for the "
          "step's input (data loading, host-to-device copies). In DDP every rank's step is equally long; a "
          "straggler shows here, and a high input wait means the data loader is the bottleneck.", "s",
          [Q(f"rate(nnwatch_forward_time_seconds_total{{{SEL}}}[$__rate_interval]) / "
             f"rate(nnwatch_steps_total{{{SEL}}}[$__rate_interval])", "forward " + who),
           Q(f"rate(nnwatch_input_wait_seconds_total{{{SEL}}}[$__rate_interval]) / "
             f"rate(nnwatch_steps_total{{{SEL}}}[$__rate_interval])", "input wait " + who)])
    b.add(_timeseries(), "Weight fingerprint by rank",
          "Global weight L2 norm taken at the same step on every rank; DDP replicas must show one line "
          "(NNWatchRankDesync fires when a rank deviates).", "none",
          [Q(f"nnwatch_weight_fingerprint{{{SEL}}}", who)])
    b.add(_timeseries(log=True), "AMP loss scale",
          "Loss scale of the watched GradScaler (monitor.watch_scaler); a scale that keeps halving means "
          "gradients keep overflowing.", "none",
          [Q(f"nnwatch_amp_loss_scale{{{SEL}}}", who)])
    b.add(_timeseries(), "AMP skipped steps",
          "Optimizer steps per second the GradScaler skipped because gradients held inf/NaN, and the current "
          "run of skips in a row (the critical nonfinite_values alert fires when it grows too long).", "none",
          [Q(f"rate(nnwatch_amp_skipped_steps_total{{{SEL}}}[$__rate_interval])", "skipped/s " + who),
           Q(f"nnwatch_amp_consecutive_skipped_steps{{{SEL}}}", "in a row " + who)])
    b.add(_timeseries(), "Agent overhead",
          "Agent time on the training thread as a share of step time: over the last sample interval and over "
          "the rate window.", "percentunit",
          [Q(f"nnwatch_agent_overhead_ratio{{{SEL}}}", "last interval " + who),
           Q(f"rate(nnwatch_agent_time_seconds_total{{{SEL}}}[$__rate_interval]) / "
             f"rate(nnwatch_step_time_seconds_total{{{SEL}}}[$__rate_interval])", "rate window " + who)])
    b.add(_timeseries(), "Agent errors",
          "Failures inside the agent's own probes per second, by probe (training continued; 0 when healthy).",
          "suffix: errors/s",
          [Q(f"sum by (job, instance, rank, probe) (rate(nnwatch_agent_errors_total{{{SEL}}}[$__rate_interval])) "
             f"or on (job, instance, rank) sum by (job, instance, rank) (0 * nnwatch_build_info{{{SEL}}})",
             "{{probe}} " + who)])
    b.add(_timeseries(), "Evaluation forwards in train mode",
          "Forward passes per second without autograd while dropout/batch-norm modules were in training mode "
          "(a forgotten model.eval()).", "suffix: forwards/s",
          [Q(f"rate(nnwatch_eval_in_train_mode_forwards_total{{{SEL}}}[$__rate_interval])", who)])
    b.add(_bargauge(0, None, (None, "green"), (1, "orange")), "Modules left out by the series cap",
          "Layers and activations without per-module series because of max_modules (totals still cover them).",
          "none", [Q(f"max by (kind) (nnwatch_series_capped_modules{{{SEL}}})", "{{kind}}", instant=True)])
    return b.to_dict()


BUILDERS = {OVERVIEW_UID: overview, TRAINING_UID: training}


def build_all() -> dict[str, dict[str, Any]]:
    """Every dashboard as a dict, keyed by uid (needs grafana-foundation-sdk)."""
    return {uid: make() for uid, make in BUILDERS.items()}


def dumps(dashboard: dict[str, Any]) -> str:
    """Stable text of a dashboard: sorted keys, two-space indent, trailing newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- generation ----------------------------------------------------------------------------------


def generate(root: Path) -> list[Path]:
    """Write dashboards/*.json under ``root`` (the Helm chart's copies are written by ``agent.ops.chart``)."""
    folder = root / "dashboards"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, board in build_all().items():
        path = folder / FILES[uid]
        path.write_text(dumps(board), encoding="utf-8")
        written.append(path)
    return written


__all__ = ["overview", "training", "build_all", "dumps", "generate",
           "OVERVIEW_UID", "TRAINING_UID", "FILES", "FOLDER_UID", "FOLDER_TITLE", "SEL", "MOD", "ALERTS_EXPR"]

"""Grafana dashboards of nnwatch: built from code, written as classic dashboard JSON, pushed to a Grafana.

Two dashboards with stable uids are built with Grafana's ``grafana-foundation-sdk`` (a generation-time
dependency only; the JSON is committed): ``nnwatch-overview`` (every job at a glance) and
``nnwatch-training`` (the health of one job, layer by layer). ``generate(root)`` writes them to
``dashboards/`` and copies them, with the PrometheusRule template built from ``agent.rules``, into the
Helm chart. ``nnwatch dashboards push`` uploads the JSON to a running Grafana with ``grafana-client``.

Every query selects ``job=~"$job", instance=~"$instance", rank=~"$rank"``: the variables' "All" value is
``.*``, which also matches a series without the label, so single-process jobs (no ``rank``) show data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

OVERVIEW_UID = "nnwatch-overview"
TRAINING_UID = "nnwatch-training"
FILES = {OVERVIEW_UID: "nnwatch-overview.json", TRAINING_UID: "nnwatch-training.json"}
"""Dashboard uid -> file name under dashboards/ (and helm/nnwatch/dashboards/)."""
FOLDER_UID = "nnwatch"
FOLDER_TITLE = "nnwatch"
TAGS = ["nnwatch", "training"]
CHART_DIR = Path("helm") / "nnwatch"

SEL = 'job=~"$job", instance=~"$instance", rank=~"$rank"'
"""Label matchers of every panel query (regex matchers: "All" is ``.*`` and matches an absent label)."""
MOD = SEL + ', module=~"$module"'
"""SEL plus the module variable, for per-layer and per-activation series."""
ALERTS_EXPR = 'ALERTS{alertname=~"NNWatch.*", alertstate="firing", job=~"$job"}'
"""Annotation query: firing nnwatch alerts from the Prometheus rules (alerts/nnwatch.rules.yml)."""
LEAK_WINDOW = "10m"
"""Window of the memory growth slope (deriv); long enough to smooth allocator noise."""


@dataclass(frozen=True)
class Q:
    """One panel query: PromQL, legend and whether Grafana runs it as an instant query."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


# --- building ------------------------------------------------------------------------------------


class _Builder:
    """Wraps the SDK's dashboard builder; assigns panel ids and keeps every import of the SDK lazy."""

    def __init__(self, uid: str, title: str, description: str, variables: Sequence[str]) -> None:
        from grafana_foundation_sdk.builders import dashboard as d
        from grafana_foundation_sdk.models.dashboard import DataSourceRef

        self.d = d
        self.ds = DataSourceRef(type_val="prometheus", uid="${datasource}")
        self.next_id = 1
        self.db = (
            d.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
            .time("now-3h", "now").refresh("30s").timezone("browser")
            .tooltip(_cursor_sync())
            .with_variable(
                d.DatasourceVariable("datasource").label("Data source").type("prometheus")
                .description("Prometheus that scrapes the training jobs.")
            )
        )
        for name in variables:
            self.db = self.db.with_variable(self._query_variable(name))
        self.db = self.db.annotation(
            d.AnnotationQuery().name("nnwatch alerts").datasource(self.ds).expr(ALERTS_EXPR)
            .enable(True).hide(False).icon_color("red")
        )

    def _query_variable(self, name: str) -> Any:
        from grafana_foundation_sdk.models.dashboard import VariableOption, VariableRefresh, VariableSort

        queries = {
            "job": ("Job", "label_values(nnwatch_build_info, job)",
                    "Prometheus job of the training processes (the scrape job or PodMonitor)."),
            "instance": ("Instance", 'label_values(nnwatch_build_info{job=~"$job"}, instance)',
                         "Scrape target (host:port or pod IP:port) of a training process."),
            "rank": ("Rank", 'label_values(nnwatch_build_info{job=~"$job", instance=~"$instance"}, rank)',
                     "Distributed rank; single-process jobs have none, and All (.*) still shows them."),
            "module": ("Module",
                       'label_values({__name__=~"nnwatch_(weight_norm|activation_dead_ratio|activation_saturated_ratio)", '
                       'job=~"$job", instance=~"$instance"}, module)',
                       "Dotted module path of a layer or activation (capped per process by max_modules)."),
        }
        label, query, description = queries[name]
        return (
            self.d.QueryVariable(name).label(label).description(description).datasource(self.ds).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )

    def row(self, title: str) -> None:
        self.db = self.db.with_row(self.d.Row(title).id(self._id()))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _targets(self, panel: Any, queries: Sequence[Q]) -> Any:
        from grafana_foundation_sdk.builders import prometheus as p
        from grafana_foundation_sdk.models.prometheus import PromQueryFormat

        for k, q in enumerate(queries):
            t = p.Dataquery().expr(q.expr).ref_id(chr(ord("A") + k)).datasource(self.ds)
            t = t.legend_format(q.legend or "__auto")
            t = t.instant() if q.instant else t.range()
            if q.table:
                t = t.format(PromQueryFormat.TABLE)
            panel = panel.with_target(t)
        return panel

    def add(self, panel: Any, title: str, description: str, unit: str, queries: Sequence[Q],
            width: int = 12, height: int = 8) -> None:
        panel = (panel.id(self._id()).title(title).description(description).unit(unit).datasource(self.ds)
                 .span(width).height(height))
        self.db = self.db.with_panel(self._targets(panel, queries))

    def to_dict(self) -> dict[str, Any]:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder

        out: dict[str, Any] = json.loads(json.dumps(self.db.build(), cls=JSONEncoder))
        out["id"] = None  # provisioning and the HTTP API match dashboards by uid, never by id
        for ann in out["annotations"]["list"]:
            # Fields of Grafana's Prometheus annotation editor that the SDK's AnnotationQuery does not model.
            ann.update({"step": "60s", "titleFormat": "{{alertname}}", "textFormat": "{{description}}",
                        "tagKeys": "severity,module", "useValueForTime": False})
        return out


def _cursor_sync() -> Any:
    from grafana_foundation_sdk.models.dashboard import DashboardCursorSync

    return DashboardCursorSync.CROSSHAIR


def _thresholds(*steps: tuple[float | None, str]) -> Any:
    from grafana_foundation_sdk.builders.dashboard import ThresholdsConfig
    from grafana_foundation_sdk.models.dashboard import Threshold, ThresholdsMode

    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=v, color=c) for v, c in steps])


def _timeseries(log: bool = False) -> Any:
    from grafana_foundation_sdk.builders import common, timeseries
    from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, ScaleDistribution

    panel = timeseries.Panel().line_width(1).fill_opacity(5).legend(
        common.VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
        .show_legend(True)
    )
    if log:
        panel = panel.scale_distribution(common.ScaleDistributionConfig().type(ScaleDistribution.LOG).log(10))
    return panel


def _stat(*steps: tuple[float | None, str]) -> Any:
    from grafana_foundation_sdk.builders import common, stat
    from grafana_foundation_sdk.models.common import BigValueColorMode, BigValueGraphMode

    panel = (stat.Panel().graph_mode(BigValueGraphMode.NONE).color_mode(BigValueColorMode.VALUE)
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    return panel.thresholds(_thresholds(*(steps or ((None, "green"),))))


def _bargauge(low: float = 0.0, high: float | None = None, *steps: tuple[float | None, str]) -> Any:
    from grafana_foundation_sdk.builders import bargauge, common
    from grafana_foundation_sdk.models.common import BarGaugeDisplayMode, BarGaugeValueMode, VizOrientation

    panel = (bargauge.Panel().display_mode(BarGaugeDisplayMode.GRADIENT).value_mode(BarGaugeValueMode.COLOR)
             .orientation(VizOrientation.HORIZONTAL).show_unfilled(True).min(low)
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if high is not None:
        panel = panel.max(high)
    return panel.thresholds(_thresholds(*(steps or ((None, "green"),))))


def _heatmap() -> Any:
    """A heatmap of per-layer ratios over time: one row per series (layer), colour = value in 0..1."""
    from grafana_foundation_sdk.builders import heatmap
    from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale

    return (heatmap.Panel().calculate(False).hide_y_histogram().show_legend()
            .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Oranges")
                   .scale(HeatmapColorScale.LINEAR).min(0).max(1).steps(64).exponent(0.5).fill("dark-orange")
                   .reverse(False))
            .y_axis(heatmap.YAxisConfig().unit("short")))


def _table() -> Any:
    from grafana_foundation_sdk.builders import table
    from grafana_foundation_sdk.models.dashboard import DataTransformerConfig

    return table.Panel().with_transformation(
        DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True, "Value": True}})
    )


def _ratio_steps(warn: float = 0.2, bad: float = 0.5) -> tuple[tuple[float | None, str], ...]:
    return ((None, "green"), (warn, "orange"), (bad, "red"))


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
    """Write dashboards/*.json and the Helm chart's generated parts under ``root``: its dashboard copies,
    the PrometheusRule template and the rules section of values.yaml and values.schema.json."""
    written = []
    for uid, board in build_all().items():
        text = dumps(board)
        for folder in (root / "dashboards", root / CHART_DIR / "dashboards"):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / FILES[uid]
            path.write_text(text, encoding="utf-8")
            written.append(path)
    from . import rules

    chart = root / CHART_DIR
    (chart / "templates").mkdir(parents=True, exist_ok=True)
    outputs = {
        chart / "templates" / "prometheusrule.yaml": rules_template(rules),
        chart / "values.yaml": values_yaml(rules, _source(root, CHART_DIR / "values.yaml")),
        chart / "values.schema.json": json.dumps(values_schema(rules), indent=2) + "\n",
    }
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _source(root: Path, rel: Path) -> str:
    """A hand-written file with a generated section: from ``root`` when present, else from this checkout."""
    from .cli import repo_root

    path = root / rel if (root / rel).is_file() else repo_root() / rel
    return path.read_text(encoding="utf-8")


# --- Helm chart: rules template, values and schema -------------------------------------------------
#
# agent.rules builds rules from a RulesConfig whose values may be strings inserted verbatim. Every
# threshold, duration and selector gets a unique plain token; the rule YAML is dumped, Prometheus' own
# {{ }} templates are escaped for Helm, then each token is replaced by its Helm action. Lists and maps
# (expected jobs, extra labels, the interval) get tokens whose whole line becomes a range/with block.

_TOKEN = "NNWHELM{:03d}X"
_EXTRA_LABEL = "NNWHELMEXTRALABELS"
_EXPECTED_JOB = "NNWHELMEXPECTEDJOB"
_INTERVAL = "NNWHELMINTERVAL"
_GENERATED_BEGIN = "  # BEGIN GENERATED by `nnwatch generate` from agent/rules.py: do not edit between these markers."
_GENERATED_END = "    # END GENERATED"


class _Slots:
    """Helm actions behind unique tokens."""

    def __init__(self) -> None:
        self.actions: list[str] = []

    def __call__(self, action: str) -> str:
        self.actions.append(action)
        return _TOKEN.format(len(self.actions) - 1)

    def fill(self, text: str) -> str:
        for k, action in enumerate(self.actions):
            inner = action[2:-2].strip()
            # "{{{" would open the action one brace early (a selector right after "metric{"): trim instead.
            text = text.replace("{" + _TOKEN.format(k), "{ {{- " + inner + " }}")
            text = text.replace(_TOKEN.format(k), action)
        return text


def _param_path(key: str) -> str:
    check, param = key.split(".")
    return f"$.Values.rules.thresholds.{check}.{param}"


def _tokenised_config(rules: Any) -> tuple[Any, _Slots]:
    slots = _Slots()
    thresholds = {k: slots('{{ include "nnwatch.promNumber" ' + _param_path(k) + " }}")
                  for k in rules.default_params()}
    durations = {r.key: slots("{{ $.Values.rules.durations." + r.key + " }}") for r in rules.RULES}
    config = rules.RulesConfig(
        selector=slots("{{ $.Values.rules.selector }}"),
        target_selector=slots("{{ $.Values.rules.targetSelector }}"),
        expected_jobs=(_EXPECTED_JOB,),
        run_labels=slots("{{ $.Values.rules.runLabels }}"),
        thresholds=thresholds,
        for_durations=durations,
        runbook_base=slots("{{ $.Values.rules.runbookBase }}"),
        extra_labels={_EXTRA_LABEL: "x"},
        interval=_INTERVAL,
    )
    return config, slots


def used_params(rules: Any) -> list[str]:
    """Threshold keys that the Prometheus rules read (the others only tune the in-process checks)."""
    config, _ = _tokenised_config(rules)
    text = json.dumps(rules.render_groups(config))
    # _tokenised_config takes the first slots for the thresholds, in default_params() order.
    return [key for k, key in enumerate(rules.default_params()) if _TOKEN.format(k) in text]


def _yaml_dump(data: Any) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=10_000, default_flow_style=False,
                     allow_unicode=True)


def rules_template(rules: Any) -> str:
    """helm/nnwatch/templates/prometheusrule.yaml: the PrometheusRule rendered from values."""
    config, slots = _tokenised_config(rules)
    body = _yaml_dump({"groups": rules.render_groups(config)})
    if "`" in body:
        raise ValueError("a rule contains a backtick, which the Helm raw-string escaping below cannot carry")
    body = re.sub(r"\{\{.*?\}\}", lambda m: "{{`" + m.group(0) + "`}}", body)  # Prometheus templates, verbatim
    body = "".join("  " + line if line else line for line in body.splitlines(keepends=True))
    body = re.sub(rf"\n( *){_EXTRA_LABEL}: x(?=\n)",
                  lambda m: "\n" + m.group(1) + "{{- with $.Values.rules.additionalRuleLabels }}\n"
                            + "{{ toYaml . | indent " + str(len(m.group(1))) + " }}\n" + m.group(1) + "{{- end }}",
                  body)
    body = re.sub(rf"\n( *)interval: {_INTERVAL}(?=\n)",
                  lambda m: "\n" + m.group(1) + "{{- with $.Values.rules.interval }}\n" + m.group(1)
                            + "interval: {{ . }}\n" + m.group(1) + "{{- end }}", body)
    body = re.sub(rf'\n( *)or\n *absent\(up\{{job="{_EXPECTED_JOB}"\}}\)',
                  lambda m: "{{- range $.Values.rules.expectedJobs }}\n" + m.group(1) + "or\n" + m.group(1)
                            + "absent(up{job={{ . | quote }}}){{- end }}", body)
    for token in (_EXTRA_LABEL, _INTERVAL, _EXPECTED_JOB):
        if token in body:
            raise ValueError(f"agent.rules output changed shape: {token} left in the chart's rule template")
    body = slots.fill(body)
    if "NNWHELM" in body:
        raise ValueError("a token was left in the chart's rule template")
    head = ("{{- /* Generated by `nnwatch generate` (agent/dashboards.py) from agent/rules.py: do not edit.\n"
            "With the chart's default values this renders the rules of alerts/nnwatch.rules.yml. */ -}}\n")
    return (head + "{{- if .Values.rules.enabled }}\n"
            "apiVersion: monitoring.coreos.com/v1\n"
            "kind: PrometheusRule\n"
            "metadata:\n"
            "  name: {{ include \"nnwatch.fullname\" . }}\n"
            "  namespace: {{ include \"nnwatch.namespace\" . }}\n"
            "  labels:\n"
            "    {{- include \"nnwatch.labels\" . | nindent 4 }}\n"
            "    {{- with .Values.rules.additionalLabels }}\n"
            "    {{- toYaml . | nindent 4 }}\n"
            "    {{- end }}\n"
            "spec:\n" + body + "{{- end }}\n")


def _param_docs(rules: Any) -> dict[str, str]:
    from .catalogue import THRESHOLD_DOCS

    docs = dict(THRESHOLD_DOCS)
    docs.update({k: d for k, (_, d) in rules.PROMETHEUS_PARAMS.items()})
    docs.update({k: d for k, (_, d) in rules.FLEET_PARAMS.items()})
    return docs


def _rule_doc(rule: Any) -> str:
    return f"{rule.summary} ({rule.severity})"


def _value_text(value: Any) -> str:
    return _yaml_dump(value).strip().removesuffix("\n...").strip()


def values_yaml(rules: Any, source: str) -> str:
    """values.yaml with its generated section (thresholds and durations of the rules) rewritten."""
    if _GENERATED_BEGIN not in source or _GENERATED_END not in source:
        raise ValueError("helm/nnwatch/values.yaml lost its BEGIN/END GENERATED markers")
    head, rest = source.split(_GENERATED_BEGIN, 1)
    _, tail = rest.split(_GENERATED_END, 1)
    defaults, docs = rules.default_params(), _param_docs(rules)
    lines = [_GENERATED_BEGIN,
             "  # Thresholds of the alerts by check and parameter (the names of the agent's thresholds option).",
             "  thresholds:"]
    checks: dict[str, list[str]] = {}
    for key in used_params(rules):
        check, param = key.split(".")
        checks.setdefault(check, []).append(param)
    for check, params in checks.items():
        lines += [f"    # Thresholds of {check}.", f"    {check}:"]
        for param in params:
            lines += [f"      # {docs[f'{check}.{param}']}", f"      {param}: {_value_text(defaults[f'{check}.{param}'])}"]
    lines += ["  # `for:` of each alert: how long its condition must hold before it fires.", "  durations:"]
    for rule in rules.RULES:
        lines += [f"    # {_rule_doc(rule)}", f"    {rule.key}: {rule.default_for}"]
    return head + "\n".join(lines) + "\n" + _GENERATED_END + tail


def values_schema(rules: Any) -> dict[str, Any]:
    """values.schema.json: every value typed and described; unknown keys are errors (typos fail early)."""

    def obj(description: str, props: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", "description": description, "additionalProperties": False,
                               "properties": props}
        if required:
            out["required"] = list(required)
        return out

    def string(description: str, **kw: Any) -> dict[str, Any]:
        return {"type": "string", "description": description, **kw}

    def boolean(description: str) -> dict[str, Any]:
        return {"type": "boolean", "description": description}

    def labels(description: str) -> dict[str, Any]:
        return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}

    def secret_ref(description: str) -> dict[str, Any]:
        return obj(description, {"name": string("Name of the Secret.", minLength=1),
                                 "key": string("Key in the Secret.", minLength=1)}, ["name", "key"])

    duration = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
    defaults, docs = rules.default_params(), _param_docs(rules)
    checks: dict[str, dict[str, Any]] = {}
    for key in used_params(rules):
        check, param = key.split(".")
        kind = ({"type": ["number", "string"]} if not isinstance(defaults[key], str)
                else dict(duration))
        checks.setdefault(check, {})[param] = {**kind, "description": docs[key]}
    thresholds = obj("Thresholds of the alerts by check and parameter.",
                     {c: obj(f"Thresholds of {c}.", p, sorted(p)) for c, p in checks.items()})
    durations = obj("`for:` of each alert.",
                    {r.key: {**duration, "description": _rule_doc(r)} for r in rules.RULES})
    relabel_list = {"type": "array", "items": {"type": "object"},
                    "description": "Prometheus Operator RelabelConfig objects."}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "nnwatch chart values",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "nameOverride": string("Overrides the chart name in object names and labels."),
            "fullnameOverride": string("Overrides the full name of every object."),
            "namespaceOverride": string("Namespace of every object (default: the release namespace)."),
            "commonLabels": labels("Labels added to every object of the chart."),
            "global": {"type": "object", "description": "Values shared with parent charts (unused)."},
            "podMonitor": obj("How Prometheus finds and scrapes training pods.", {
                "enabled": boolean("Render the PodMonitor."),
                "additionalLabels": labels("Labels Prometheus selects PodMonitors by."),
                "podLabels": {**labels("Pods carrying all of these labels are scraped."), "minProperties": 1},
                "portNames": {"type": "array", "minItems": 1, "uniqueItems": True,
                              "items": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                        "maxLength": 15},
                              "description": "Names of the container ports serving /metrics (one per local rank)."},
                "namespaces": {"type": "array", "items": {"type": "string", "minLength": 1},
                               "description": "Namespaces whose labelled pods are scraped; empty means every one."},
                "interval": {**duration, "description": "Scrape interval."},
                "scrapeTimeout": {**duration, "description": "Scrape timeout (below the interval)."},
                "path": string("HTTP path of the agent's metrics.", pattern="^/"),
                "scheme": string("Scheme of the scrape.", enum=["http", "https"]),
                "tlsConfig": {"type": "object", "description": "TLS settings of the scrape (SafeTLSConfig)."},
                "runLabel": string('Pod label whose value names the run (job="nnwatch/<value>"); "" disables.'),
                "runFromKubernetesJob": boolean("Use the Kubernetes Job name when the pod has no runLabel."),
                "podTargetLabels": {"type": "array", "items": {"type": "string"},
                                    "description": "Pod labels copied onto every series."},
                "relabelings": relabel_list,
                "metricRelabelings": relabel_list,
            }),
            "rules": obj("The nnwatch alert rules as a PrometheusRule.", {
                "enabled": boolean("Render the PrometheusRule."),
                "additionalLabels": labels("Labels Prometheus selects PrometheusRules by."),
                "selector": string("Label matchers added to every nnwatch_* selector.", minLength=1),
                "targetSelector": string("Matchers on `up` for NNWatchExporterDown.", minLength=1),
                "expectedJobs": {"type": "array", "items": {"type": "string"},
                                 "description": "Jobs that must always have a target."},
                "runLabels": string("Labels that identify one training run across its ranks.", minLength=1),
                "runbookBase": string("Base URL of the runbooks.", minLength=1),
                "additionalRuleLabels": labels("Labels added to every alert."),
                "interval": string('Evaluation interval of the rule groups ("" for the global one).',
                                   pattern=r"^(([0-9]+(ms|s|m|h|d|w|y))+)?$"),
                "thresholds": thresholds,
                "durations": durations,
            }),
            "dashboards": obj("Grafana dashboards as ConfigMaps for the Grafana sidecar.", {
                "enabled": boolean("Render the dashboard ConfigMaps."),
                "label": string("Label the Grafana sidecar looks for.", minLength=1),
                "labelValue": string("Value of that label."),
                "folder": string("Grafana folder of the dashboards."),
                "folderAnnotation": string("Annotation the sidecar reads the folder from.", minLength=1),
                "additionalLabels": labels("Extra labels of the ConfigMaps."),
                "annotations": labels("Extra annotations of the ConfigMaps."),
            }),
            "alertmanagerConfig": obj("Optional routing: critical -> PagerDuty, warning -> Slack.", {
                "enabled": boolean("Render the AlertmanagerConfig."),
                "additionalLabels": labels("Labels the Alertmanager selects AlertmanagerConfigs by."),
                "groupBy": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                            "description": "Labels alerts are grouped by."},
                "groupWait": {**duration, "description": "Wait before the first notification of a group."},
                "groupInterval": {**duration, "description": "Wait before notifying about new alerts of a group."},
                "repeatInterval": {**duration, "description": "Resend a still-firing alert after this long."},
                "inhibitWarningsByCritical": boolean("Silence warnings while a critical alert of the same "
                                                     "alertname and job fires."),
                "pagerduty": obj("PagerDuty receiver of critical alerts.", {
                    "enabled": boolean("Route critical alerts to PagerDuty."),
                    "routingKeySecret": secret_ref("Secret holding the PagerDuty routing key."),
                    "url": string('Events API URL ("" for the default of PagerDuty).'),
                }),
                "slack": obj("Slack receiver of warnings.", {
                    "enabled": boolean("Route warnings to Slack."),
                    "apiURLSecret": secret_ref("Secret holding the Slack incoming-webhook URL."),
                    "channel": string('Channel to post to ("" for the channel of the webhook).'),
                }),
            }),
        },
    }


# --- push ----------------------------------------------------------------------------------------


class PushError(RuntimeError):
    """A push failed for a reason the user can fix; the message says how."""


def load_dashboards(folder: Path | None) -> list[dict[str, Any]]:
    """The committed dashboards from ``folder`` (default: the checkout's dashboards/), or built in memory
    when no folder has them (an installed package without the checkout)."""
    from .cli import repo_root

    folder = folder if folder is not None else repo_root() / "dashboards"
    paths = [folder / name for name in FILES.values()]
    if all(p.is_file() for p in paths):
        return [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    try:
        return list(build_all().values())
    except ModuleNotFoundError:
        raise PushError(f"no dashboards in {folder} and grafana-foundation-sdk is not installed to build them; "
                        "pass --dir pointing at nnwatch's dashboards/ folder") from None


def push(url: str, token: str | None, dashboards: Iterable[dict[str, Any]], folder_uid: str = FOLDER_UID,
         folder_title: str = FOLDER_TITLE, timeout: float = 10.0) -> list[str]:
    """Create or overwrite each dashboard (matched by uid) in the folder ``folder_uid``, creating the folder
    when missing. Returns the dashboards' URLs as Grafana reports them. Running it twice changes nothing
    but the dashboards' version numbers."""
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaClientError, GrafanaException
    except ModuleNotFoundError:
        raise PushError("pushing needs grafana-client: pip install 'nnwatch[grafana]'") from None

    boards = list(dashboards)
    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
    step = "connecting"
    try:
        api.health.check()
        step = "looking up the folder"
        try:
            api.folder.get_folder(folder_uid)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            step = "creating the folder"
            api.folder.create_folder(folder_title, uid=folder_uid)
        urls = []
        for board in boards:
            step = f"uploading dashboard {board.get('uid')}"
            body = {"dashboard": {**board, "id": None}, "folderUid": folder_uid, "overwrite": True,
                    "message": "nnwatch dashboards push"}
            reply = api.dashboard.update_dashboard(body)
            urls.append(str(reply.get("url", "")) if isinstance(reply, dict) else "")
        step = "listing the pushed dashboards"
        uids = [b.get("uid") for b in boards]
        found = {d.get("uid") for d in api.search.search_dashboards(dashboard_uids=uids, type_="dash-db") or []}
        missing = [b.get("uid") for b in boards if b.get("uid") not in found]
        if missing:
            raise PushError(f"Grafana at {url} accepted the dashboards but search does not list {missing}")
        return urls
    except GrafanaClientError as exc:
        if exc.status_code in (401, 403):
            what = "rejected the token" if exc.status_code == 401 else "refused the token's permissions"
            raise PushError(
                f"Grafana at {url} {what} (HTTP {exc.status_code}) while {step}. Pass a service account token "
                "with the Editor role (or Admin to create the folder) via --token or NNWATCH_GRAFANA_TOKEN."
            ) from None
        raise PushError(f"Grafana at {url} answered HTTP {exc.status_code} while {step}: {exc.message}") from None
    except (OSError, GrafanaException) as exc:  # the HTTP library's connection errors are OSErrors
        raise PushError(f"cannot reach Grafana at {url} while {step} ({_short(exc)}); check --url or "
                        "NNWATCH_GRAFANA_URL and that Grafana is running.") from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] [^')\"]+", text)
    return m.group(0) if m else text[:200]


def _push_command(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("NNWATCH_GRAFANA_URL")
    token = args.token or os.environ.get("NNWATCH_GRAFANA_TOKEN")
    if not url:
        print("nnwatch dashboards push: no Grafana URL; pass --url or set NNWATCH_GRAFANA_URL "
              "(e.g. http://localhost:3000)", file=sys.stderr)
        return 2
    try:
        boards = load_dashboards(Path(args.dir) if args.dir else None)
        urls = push(url, token, boards, folder_uid=args.folder_uid, folder_title=args.folder, timeout=args.timeout)
    except PushError as exc:
        print(f"nnwatch dashboards push: {exc}", file=sys.stderr)
        return 1
    base = url.rstrip("/")
    for board, path in zip(boards, urls):
        print(f"pushed {board['uid']}: {base}{path}" if path else f"pushed {board['uid']}")
    return 0


def _generate_command(args: argparse.Namespace) -> int:
    from .cli import repo_root

    root = Path(args.root) if args.root else repo_root()
    for path in generate(root):
        print(f"wrote {path.relative_to(root)}")
    return 0


def register(sub: Any) -> None:
    """Add ``nnwatch dashboards push|generate``."""
    p = sub.add_parser("dashboards", help="Grafana dashboards: push them to a running Grafana, or regenerate them")
    dsub = p.add_subparsers(dest="dashboards_command", required=True)
    push_p = dsub.add_parser("push", help="create or overwrite the nnwatch dashboards in a Grafana (by uid)")
    push_p.add_argument("--url", help="Grafana base URL, e.g. http://localhost:3000 (env NNWATCH_GRAFANA_URL)")
    push_p.add_argument("--token", help="service account token with the Editor role (env NNWATCH_GRAFANA_TOKEN); "
                        "user:password in the URL also works")
    push_p.add_argument("--folder", default=FOLDER_TITLE, help=f"folder title (default: {FOLDER_TITLE})")
    push_p.add_argument("--folder-uid", default=FOLDER_UID, help=f"folder uid (default: {FOLDER_UID})")
    push_p.add_argument("--dir", help="folder with the dashboard JSON (default: the checkout's dashboards/)")
    push_p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default: 10)")
    push_p.set_defaults(func=_push_command)
    gen_p = dsub.add_parser("generate", help="rewrite dashboards/*.json and the Helm chart's copies")
    gen_p.add_argument("--root", help="repository root to write into (default: this checkout)")
    gen_p.set_defaults(func=_generate_command)


__all__ = ["overview", "training", "build_all", "dumps", "generate", "push", "PushError", "register",
           "OVERVIEW_UID", "TRAINING_UID", "FILES", "SEL", "MOD", "ALERTS_EXPR"]

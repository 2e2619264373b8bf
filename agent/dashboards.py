"""Grafana dashboards of nnwatch: built from code and written as classic dashboard JSON.

Two dashboards with stable uids are built with Grafana's ``grafana-foundation-sdk`` (a generation-time
dependency only; the JSON is committed): ``nnwatch-overview`` (every job at a glance) and
``nnwatch-training`` (the health of one job, layer by layer). ``generate(root)`` writes them to
``dashboards/``; ``agent.chart`` copies them into the Helm chart and ``agent.grafana_push`` uploads them to a
running Grafana. This module also registers ``nnwatch dashboards push|generate``.

Every query selects ``job=~"$job", instance=~"$instance", rank=~"$rank"``: the variables' "All" value is
``.*``, which also matches a series without the label, so single-process jobs (no ``rank``) show data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

OVERVIEW_UID = "nnwatch-overview"
TRAINING_UID = "nnwatch-training"
FILES = {OVERVIEW_UID: "nnwatch-overview.json", TRAINING_UID: "nnwatch-training.json"}
"""Dashboard uid -> file name under dashboards/ (and helm/nnwatch/dashboards/)."""
FOLDER_UID = "nnwatch"
FOLDER_TITLE = "nnwatch"
TAGS = ["nnwatch", "training"]

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
    """Write dashboards/*.json under ``root`` (the Helm chart's copies are written by ``agent.chart``)."""
    folder = root / "dashboards"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, board in build_all().items():
        path = folder / FILES[uid]
        path.write_text(dumps(board), encoding="utf-8")
        written.append(path)
    return written


# --- command line --------------------------------------------------------------------------------


def _generate_command(args: argparse.Namespace) -> int:
    from . import chart
    from .cli import repo_root

    root = Path(args.root) if args.root else repo_root()
    for path in generate(root) + chart.generate(root):
        print(f"wrote {path.relative_to(root)}")
    return 0


def register(sub: Any) -> None:
    """Add ``nnwatch dashboards push|generate``."""
    from .grafana_push import push_command  # imported here: agent.grafana_push imports this module

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
    push_p.set_defaults(func=push_command)
    gen_p = dsub.add_parser("generate", help="rewrite dashboards/*.json and the Helm chart's copies")
    gen_p.add_argument("--root", help="repository root to write into (default: this checkout)")
    gen_p.set_defaults(func=_generate_command)


__all__ = ["overview", "training", "build_all", "dumps", "generate", "register",
           "OVERVIEW_UID", "TRAINING_UID", "FILES", "FOLDER_UID", "FOLDER_TITLE", "SEL", "MOD", "ALERTS_EXPR"]

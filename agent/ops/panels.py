"""Panel building blocks for the dashboards: the query record and thin wrappers over grafana-foundation-sdk
(every import of the SDK is lazy: it is a generation-time dependency only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

TAGS = ["nnwatch", "training"]
ALERTS_EXPR = 'ALERTS{alertname=~"NNWatch.*", alertstate="firing", job=~"$job"}'
"""Annotation query: firing nnwatch alerts from the Prometheus rules (alerts/nnwatch.rules.yml)."""


@dataclass(frozen=True)
class Q:
    """One panel query: PromQL, legend and whether Grafana runs it as an instant query."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


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


__all__ = ["Q", "_Builder", "_timeseries", "_stat", "_bargauge", "_heatmap", "_table", "_ratio_steps"]

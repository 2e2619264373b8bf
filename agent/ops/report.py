"""``nnwatch report HISTORY -o report.html``: one self-contained HTML page from a local history (agent.export.history).

The page needs no network: plotly.js is inlined once and every figure's data is in the page. Figures, top to
bottom, each ``PLOT_HEIGHT`` pixels high (the screenshot test relies on the fixed layout): loss and validation
loss, learning rate, global and per-layer gradient norms over time, per-layer gradient norms of the latest
sample (bars), update ratios, dead and saturated fractions per activation (heatmaps), memory, and the findings
on a timeline; then a table of every finding with its message. Needs plotly (``pip install 'nnwatch[report]'``).
"""

from __future__ import annotations

import argparse
import html
import math
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..export.history import HistoryError, open_history, read_meta

HEADER_HEIGHT = 160
"""Pixels of the page header above the first figure (fixed)."""
PLOT_HEIGHT = 420
"""Pixels of each figure (fixed)."""
PLOTS = ("loss", "lr", "grad_norms", "grad_bars", "update_ratios", "dead", "saturated", "memory", "findings")
"""Figure ids (``plot-<id>``) in page order."""
MAX_POINTS = 600
"""Points per per-layer line and columns per heatmap (evenly picked; global lines keep every sample)."""
SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
LAYER_BAR_COLOUR = "#2a9d8f"


@dataclass
class History:
    """What a report shows, read from a history file."""

    meta: dict[str, str]
    steps: list[int] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)
    layers: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    """Layer name -> {"seq", "step", "grad_norm", "update_ratio"} lists, in sample order."""
    activations: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    """Activation key -> {"seq", "dead", "saturated"} lists, in sample order."""
    findings: list[dict[str, Any]] = field(default_factory=list)


def read_history(path: str | Path) -> History:
    """Read a history; HistoryError (one clear sentence) when it is missing, truncated, corrupt or of another version."""
    conn = open_history(path, readonly=True)
    try:
        return _read(conn, read_meta(conn, path))
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"{path} is damaged and cannot be read ({exc}); was it truncated or copied while written?") from None
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, meta: dict[str, str]) -> History:
    h = History(meta)
    cols = ("seq", "step", "time", "loss", "val_loss", "lrs", "grad_norm", "update_ratio", "host_rss",
            "cuda_allocated")
    rows = conn.execute(f"SELECT {', '.join(cols)} FROM samples ORDER BY seq").fetchall()
    h.columns = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    h.steps = h.columns["step"]
    step_of = dict(zip(h.columns["seq"], h.steps))
    names = {i: (kind, name) for i, kind, name in conn.execute("SELECT id, kind, name FROM series ORDER BY id")}
    for name_id, (kind, name) in names.items():
        if kind == "layer":
            h.layers[name] = {"seq": [], "step": [], "grad_norm": [], "update_ratio": []}
        else:
            h.activations[name] = {"seq": [], "dead": [], "saturated": []}
    for seq, i, grad, ratio in conn.execute("SELECT seq, id, grad_norm, update_ratio FROM layers ORDER BY id, seq"):
        d = h.layers[names[i][1]]
        d["seq"].append(seq)
        d["step"].append(step_of.get(seq))
        d["grad_norm"].append(grad)
        d["update_ratio"].append(ratio)
    for seq, i, dead, sat in conn.execute("SELECT seq, id, dead, saturated FROM activations ORDER BY id, seq"):
        d = h.activations[names[i][1]]
        d["seq"].append(seq)
        d["dead"].append(dead)
        d["saturated"].append(sat)
    h.layers = {k: v for k, v in h.layers.items() if v["seq"]}
    h.activations = {k: v for k, v in h.activations.items() if v["seq"]}
    fcols = ("step", "since", "status", "check_name", "severity", "module", "also", "message")
    h.findings = [dict(zip(fcols, r)) for r in conn.execute(f"SELECT {', '.join(fcols)} FROM findings ORDER BY id")]
    return h


def _layer_lines(f: Any, h: Any, steps: list[int], key: str) -> Any:
    """One thin line per layer (thinned to a few hundred points) and the model's global value in black."""
    for name, d in h.layers.items():
        idx = _pick(len(d["seq"]))
        f.add_scatter(x=[d["step"][i] for i in idx], y=_positive([d[key][i] for i in idx]), name=name,
                      mode="lines", line={"width": 1}, opacity=0.7)
    f.add_scatter(x=steps, y=_positive(h.columns.get(key, [])), name="global", mode="lines",
                  line={"color": "black", "width": 3})
    return f


def _pick(n: int, limit: int = MAX_POINTS) -> list[int]:
    """At most ``limit`` indices of 0..n-1, evenly spread, first and last included."""
    if n <= limit:
        return list(range(n))
    return sorted({round(k * (n - 1) / (limit - 1)) for k in range(limit)})


def _positive(values: list[Any]) -> list[Any]:
    """For log axes: zeros and non-finite values become gaps."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else None for v in values]


def _empty(fig: Any, text: str) -> Any:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 16})
    return fig


def figures(h: History) -> dict[str, Any]:
    """One plotly figure per entry of PLOTS."""
    import plotly.graph_objects as go

    def fig(title: str, ytitle: str, log: bool = False) -> Any:
        f = go.Figure()
        f.update_layout(title=title, height=PLOT_HEIGHT, margin={"l": 70, "r": 30, "t": 50, "b": 45},
                        xaxis_title="step", yaxis_title=ytitle, template="plotly_white",
                        legend={"font": {"size": 10}})
        if log:
            f.update_yaxes(type="log")
        return f

    c, steps = h.columns, h.steps
    out: dict[str, Any] = {}

    f = out["loss"] = fig("Loss", "loss")
    f.add_scatter(x=steps, y=c.get("loss", []), name="train loss", mode="lines", line={"color": "#1f77b4"})
    val = [(s, v) for i, (s, v) in enumerate(zip(steps, c.get("val_loss", [])))
           if v is not None and (i == 0 or v != c["val_loss"][i - 1])]  # the latest value repeats until the next
    if val:
        f.add_scatter(x=[s for s, _ in val], y=[v for _, v in val], name="validation loss", mode="lines+markers",
                      line={"color": "#ff7f0e"})
    for fd in [fd for fd in h.findings if fd["status"] == "firing"][:50]:
        f.add_vline(x=fd["step"], line={"color": SEVERITY_COLOURS.get(fd["severity"], "#888"), "dash": "dot",
                                        "width": 1})
    if not steps:
        _empty(f, "no sampled step recorded yet")

    f = out["lr"] = fig("Learning rate", "learning rate")
    groups = [[float(x) for x in s.split(",")] if s else [] for s in c.get("lrs", [])]
    for g in range(max((len(x) for x in groups), default=0)):
        f.add_scatter(x=steps, y=[x[g] if g < len(x) else None for x in groups], name=f"group {g}", mode="lines")
    f.update_yaxes(rangemode="tozero")
    if not any(groups):
        _empty(f, "no learning rate recorded (no optimizer and no log(lr=...))")

    out["grad_norms"] = _layer_lines(fig("Gradient norm: global and per layer", "L2 norm", log=True), h, steps,
                                     "grad_norm")

    f = out["grad_bars"] = fig("Gradient norm per layer, latest sample", "L2 norm", log=True)
    last = {name: d["grad_norm"][-1] for name, d in h.layers.items() if d["seq"] and d["seq"][-1] == (c["seq"] or [None])[-1]}
    if last:
        f.add_bar(x=list(last), y=_positive(list(last.values())), marker_color=LAYER_BAR_COLOUR, name="grad norm")
        f.update_xaxes(title="layer", type="category")
        f.update_layout(title=f"Gradient norm per layer at step {steps[-1]}")
    else:
        _empty(f, "no per-layer gradient recorded")

    out["update_ratios"] = _layer_lines(fig("Update ratio (update norm / weight norm; healthy about 1e-3)", "ratio",
                                            log=True), h, steps, "update_ratio")

    for key, title, scale in (("dead", "Dead units: fraction never positive over the window", "Reds"),
                              ("saturated", "Saturated activations: fraction in the flat region", "Purples")):
        f = out[key] = fig(title, "activation")
        rows = {k: d for k, d in h.activations.items() if any(v is not None for v in d[key])}
        if rows:
            idx = _pick(len(steps))
            seqs = [c["seq"][i] for i in idx]
            z = []
            for d in rows.values():
                by_seq = dict(zip(d["seq"], d[key]))
                z.append([by_seq.get(s) for s in seqs])
            f.add_heatmap(x=[steps[i] for i in idx], y=list(rows), z=z, zmin=0, zmax=1, colorscale=scale,
                          colorbar={"title": "fraction"}, hovertemplate="%{y} at step %{x}: %{z:.0%}<extra></extra>")
            f.update_yaxes(type="category")
        else:
            _empty(f, f"no {'ReLU-family' if key == 'dead' else 'tanh/sigmoid'} activation observed")

    f = out["memory"] = fig("Memory", "MiB")
    for col, name in (("host_rss", "host RSS"), ("cuda_allocated", "CUDA allocated")):
        values = c.get(col, [])
        if any(v is not None for v in values):
            f.add_scatter(x=steps, y=[v / 2**20 if v is not None else None for v in values], name=name, mode="lines")

    f = out["findings"] = fig("Findings: from the step a condition held until it resolved (or the end)", "")
    f.update_layout(margin={"l": 190})
    end = steps[-1] if steps else 0
    for sev, colour in SEVERITY_COLOURS.items():
        xs: list[Any] = []
        ys: list[Any] = []
        texts: list[Any] = []
        for fd, until in _spans(h.findings, end):
            if fd["severity"] == sev:
                label = fd["check_name"] + (f" {fd['module']}" if fd["module"] else "")
                xs += [fd["since"], max(until, fd["since"]), None]
                ys += [label, label, None]
                texts += [_hover(fd), _hover(fd), None]
        if xs:
            f.add_scatter(x=xs, y=ys, mode="lines+markers", name=sev, line={"color": colour, "width": 10},
                          marker={"color": colour, "size": 14}, text=texts, hoverinfo="text")
    if h.findings:
        f.update_yaxes(type="category", automargin=True)
    else:
        _empty(f, "no findings")
    if steps:
        pad = max(1, (steps[-1] - steps[0]) * 0.02)
        f.update_xaxes(range=[steps[0] - pad, steps[-1] + pad])
    return out


def _spans(findings: list[dict[str, Any]], end: int) -> list[tuple[dict[str, Any], int]]:
    """Each firing finding with the step it resolved at (``end`` while it still holds)."""
    out = []
    for i, fd in enumerate(findings):
        if fd["status"] != "firing":
            continue
        until = next((r["step"] for r in findings[i + 1:] if r["status"] == "resolved"
                      and (r["check_name"], r["module"]) == (fd["check_name"], fd["module"])), end)
        out.append((fd, until))
    return out


def _hover(fd: dict[str, Any]) -> str:
    where = f" in {fd['module']}" if fd["module"] else ""
    text = f"{fd['status']} at step {fd['step']}: {fd['check_name']}{where}<br>{fd['message']}"
    return "<br>".join(html.escape(text[i:i + 100]).replace("&lt;br&gt;", "<br>") for i in range(0, len(text), 100))


def render(h: History, source: str = "") -> str:
    """The whole HTML page."""
    from plotly.offline import get_plotlyjs

    figs = figures(h)
    divs = "\n".join(
        f'<div class="plot">{figs[k].to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{k}", default_height=f"{PLOT_HEIGHT}px", config={"displaylogo": False})}</div>'
        for k in PLOTS)
    steps = h.steps
    span = f"steps {steps[0]} to {steps[-1]}, {len(steps)} samples kept" if steps else "no sampled step"
    rows = "\n".join(
        f"<tr><td>{fd['step']}</td><td>{html.escape(fd['status'])}</td><td class=\"{html.escape(fd['severity'])}\">"
        f"{html.escape(fd['severity'])}</td><td>{html.escape(fd['check_name'])}</td><td>{html.escape(fd['module'] or '')}"
        f"{html.escape(', ' + fd['also'].replace(chr(10), ', ')) if fd['also'] else ''}</td>"
        f"<td>{html.escape(fd['message'])}</td></tr>" for fd in h.findings)
    table = (f"<table><tr><th>step</th><th>status</th><th>severity</th><th>check</th><th>module</th><th>message</th></tr>"
             f"{rows}</table>" if rows else "<p>No findings.</p>")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>nnwatch report</title>
<style>
body {{ margin: 0; font-family: sans-serif; background: #fff; }}
header {{ height: {HEADER_HEIGHT}px; box-sizing: border-box; padding: 12px 24px; overflow: hidden; }}
.plot {{ height: {PLOT_HEIGHT}px; overflow: hidden; }}
table {{ border-collapse: collapse; margin: 16px 24px; font-size: 13px; }}
td, th {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
.critical {{ color: {SEVERITY_COLOURS['critical']}; }} .warning {{ color: {SEVERITY_COLOURS['warning']}; }}
</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>nnwatch report</h1>
<p>{html.escape(source)}: {span}, {len(h.findings)} finding event(s). Written by nnwatch {html.escape(h.meta.get('nnwatch_version', '?'))},
report by nnwatch {__version__}. Older samples are thinned (every finding is kept).</p></header>
{divs}
<h2 style="margin-left:24px">Findings</h2>
{table}
</body></html>
"""


def write_report(history: str | Path, out: str | Path) -> Path:
    """Read ``history`` and write the report to ``out``; returns the path written."""
    h = read_history(history)
    _require_plotly()
    page = render(h, str(history))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


class MissingPlotly(RuntimeError):
    pass


def _require_plotly() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise MissingPlotly("nnwatch report needs plotly: pip install 'nnwatch[report]' (or pip install plotly)") from None


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML page from a local history (history= option)")
    p.add_argument("history", help="the history file (attach(..., history=PATH) or NNWATCH_HISTORY)")
    p.add_argument("-o", "--output", help="HTML file to write (default: the history's path with .html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.output or str(Path(args.history).with_suffix(".html"))
    try:
        path = write_report(args.history, out)
    except (HistoryError, MissingPlotly, OSError) as exc:
        print(f"nnwatch report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


__all__ = ["write_report", "read_history", "render", "figures", "History", "PLOTS", "PLOT_HEIGHT", "HEADER_HEIGHT"]

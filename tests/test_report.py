"""agent.ops.report: the demo's report renders in headless Chromium and every plot draws (checked on the pixels)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ops.report import HEADER_HEIGHT, LAYER_BAR_COLOUR, PLOT_HEIGHT, PLOTS, SEVERITY_COLOURS, read_history, render
from tests.helpers import require_binary, require_module

WIDTH = 1280


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--hold", "0", "--steps", "200", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    return out / "report.html"


def screenshot(chromium: str, page: Path, png: Path) -> "object":
    """The page as Chromium draws it (JavaScript run, no network), as a PIL image."""
    image = require_module("PIL.Image")
    height = HEADER_HEIGHT + PLOT_HEIGHT * len(PLOTS)
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--no-first-run", f"--window-size={WIDTH},{height}",
                    "--virtual-time-budget=30000", f"--screenshot={png}", page.as_uri()],
                   capture_output=True, timeout=180, check=True)
    return image.open(png).convert("RGB")


def area(im, name: str) -> list[tuple[int, int, int]]:
    """The pixels of one figure's area (the layout is fixed: agent.ops.report.HEADER_HEIGHT/PLOT_HEIGHT)."""
    top = HEADER_HEIGHT + PLOTS.index(name) * PLOT_HEIGHT
    data = im.crop((0, top, WIDTH, top + PLOT_HEIGHT)).tobytes()
    return list(zip(data[0::3], data[1::3], data[2::3]))


def near(pixels, colour: str, tol: int = 24) -> int:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(abs(p[0] - r) <= tol and abs(p[1] - g) <= tol and abs(p[2] - b) <= tol for p in pixels)


def inked(pixels) -> int:
    """Pixels that are not (near) white background."""
    return sum(min(p) < 235 for p in pixels)


def test_report_is_self_contained(demo_report):
    page = demo_report.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", page)  # nothing to fetch
    assert page.count("Plotly.newPlot") == len(PLOTS)
    assert "dead_units" in page and "never positive" in page  # the finding and its message
    assert len(page) < 8 * 2**20


def test_the_demo_report_draws_every_plot_in_chromium(demo_report, tmp_path):
    chromium = require_binary("chromium")
    im = screenshot(chromium, demo_report, tmp_path / "report.png")
    # The control: the same page without plotly.js draws no figure at all, so the checks below can fail.
    blank = tmp_path / "blank.html"
    blank.write_text(re.sub(r"<script type=\"text/javascript\">.*?</script>", "", demo_report.read_text(), count=1,
                            flags=re.S))
    control = screenshot(chromium, blank, tmp_path / "blank.png")
    for name in PLOTS:
        pixels = area(im, name)
        assert inked(area(control, name)) < 0.002 * len(pixels), name
        assert inked(pixels) > 0.005 * len(pixels), f"{name}: nothing drawn"  # axes alone ink ~1%
        assert len(set(pixels)) > 30, f"{name}: too few colours"
    # Each figure's own marks, in colours only it uses (a healthy render has 3-10x these counts).
    loss, bars, dead = area(im, "loss"), area(im, "grad_bars"), area(im, "dead")
    assert near(loss, "#1f77b4") > 500 and near(loss, "#ff7f0e") > 100  # train and validation loss lines
    assert near(bars, LAYER_BAR_COLOUR, 8) > 20_000  # three bars, the latest per-layer gradient norms
    assert sum(p[0] > 150 and p[1] < 60 and p[2] < 60 for p in dead) > 20_000  # the dead layer is dark red
    assert near(area(im, "findings"), SEVERITY_COLOURS["warning"], 8) > 2_000  # the dead_units span
    assert near(area(im, "grad_norms"), "#000000", 40) > 1_000  # the global gradient norm line
    assert near(area(im, "update_ratios"), "#000000", 40) > 1_000  # the global update ratio line
    assert near(area(im, "lr"), "#636efa") > 300 and near(area(im, "memory"), "#636efa") > 300  # their lines


def test_an_empty_history_renders_with_notes(tmp_path):
    require_module("plotly")
    from agent.export.history import HistoryWriter

    path = tmp_path / "h.sqlite"
    HistoryWriter(path).close()
    page = render(read_history(path), str(path))
    assert "no sampled step recorded yet" in page and "no findings" in page.lower()


def test_report_without_plotly_says_what_to_install(tmp_path, monkeypatch):
    from agent.export.history import HistoryWriter
    from agent.ops import report

    path = tmp_path / "h.sqlite"
    HistoryWriter(path).close()
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly raises ImportError
    with pytest.raises(report.MissingPlotly, match=r"pip install 'nnwatch\[report\]'"):
        report.write_report(path, tmp_path / "r.html")


def test_report_command_writes_next_to_the_history_and_prints_the_path(tmp_path, capsys):
    require_module("plotly")
    from agent.cli import main
    from agent.export.history import HistoryWriter
    from tests.test_history import FINDING, snap

    path = tmp_path / "run.sqlite"
    w = HistoryWriter(path)
    for step in range(0, 100, 10):
        w.record(snap(step, layers=4))
    w.finding("firing", FINDING, 30)
    w.close()
    assert main(["report", str(path)]) == 0
    out = tmp_path / "run.html"
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    for k in PLOTS:
        assert f'id="plot-{k}"' in page
    assert "Gradient norm per layer at step 90" in page and "activation relu1: 75% dead" in page

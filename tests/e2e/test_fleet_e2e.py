"""`python -m benchmarks.fleet --quick --remote-write`: 2 jobs x 100 ranks scraped by a real Prometheus with
the shipped rules; the three planted faults reach a real Alertmanager with the right job and rank, healthy
ranks stay silent, and the dashboards' queries answer from VictoriaMetrics as they do from Prometheus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.servers import alertmanager_binary
from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_quick_fleet_run_delivers_the_planted_alerts(tmp_path: Path) -> None:
    require_binary("prometheus")
    alertmanager_binary()
    require_binary("victoria-metrics")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fleet", "--quick", "--remote-write",
                           "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=420)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-4000:]
    result = json.loads(lines[-1])
    assert proc.returncode == 0, proc.stderr[-4000:]

    assert result["targets"] == 200
    expected = {"nan": ("NNWatchNonfiniteValues", "nnwatch-fleet-0", "1"),
                "straggler": ("NNWatchStragglerRank", "nnwatch-fleet-1", "50"),
                "hung": ("NNWatchTrainingStalled", "nnwatch-fleet-1", "99")}
    for fault, (alert, job, rank) in expected.items():
        got = result["alerts"][fault]
        assert (got["alert"], got["job"], got["rank"]) == (alert, job, rank)
        assert got["latency_s"] is not None and got["latency_s"] >= got["for_s"], got
    assert result["alerts_before_faults"] == [] and result["other_alerts"] == {}, result

    # Per-module series only on rank 0: O(layers + ranks) per job, as Prometheus counted them.
    assert result["series_per_rank0"] > 5 * result["series_per_other_rank"]
    assert result["scrape_samples"]["rank0"]["median"] == result["series_per_rank0"]
    assert result["head_series"]["max"] >= result["series_expected"]
    assert set(result["rule_group_eval_s"]) == {"nnwatch.checks", "nnwatch.fleet"}
    assert result["prometheus_rss_bytes"]["max"] > 0

    rw = result["remote_write"]
    assert rw["series"] == rw["series_prometheus"] > 0
    boards = rw["dashboards"]
    assert boards["answered_by_prometheus_only"] == [], boards
    assert boards["answered_by_both"] >= 40

"""The README's demo: trains on digits, serves /metrics, catches the planted fault."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys

import pytest


@pytest.mark.parametrize("fault,check", [("dead-relu", "dead_units"), ("no-zero-grad", "gradients_not_cleared"),
                                         ("nan", "nonfinite_values")])
def test_demo_catches_its_planted_fault(fault, check, tmp_path):
    res = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--fault", fault, "--hold", "0", "--steps", "200",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", out)
    assert f"nnwatch [" in out and f"] {check}:" in out  # the log line, in the job's own output
    assert re.search(rf"- (WARNING|CRITICAL) {check}", out)  # the summary
    report = tmp_path / "report.html"
    assert res.stdout.strip().splitlines()[-1] == f"report: {report}"  # the last line: where the report is
    assert report.stat().st_size > 1_000_000 and f"{check}" in report.read_text()  # plotly.js inlined, the finding
    assert sqlite3.connect(tmp_path / "history.sqlite").execute(
        "SELECT count(*) FROM findings WHERE check_name = ?", (check,)).fetchone()[0] >= 1


def test_demo_records_a_new_history_each_time(tmp_path):
    for _ in range(2):
        res = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--fault", "none", "--hold", "0", "--steps",
                              "20", "--sample-every", "2", "--out", str(tmp_path)], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    assert sqlite3.connect(tmp_path / "history.sqlite").execute("SELECT min(step), count(*) FROM samples").fetchone() == (0, 10)


def test_demo_without_fault_finds_nothing(tmp_path):
    res = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--fault", "none", "--hold", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "the agent found no problem" in res.stdout, res.stdout + res.stderr


def test_demo_preflight_prints_its_report_before_training(tmp_path):
    res = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--preflight", "--fault", "lr-zero", "--hold", "0",
                          "--steps", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    head = re.search(r"nnwatch preflight: 3 passed, 1 failed, 1 skipped in \d+\.\d\d s", out)  # the time
    assert head, out
    assert re.search(r"^overfit_one_batch\s+FAIL\s+2\.\d+\s+the loss on 16 examples went from", out, re.M), out
    assert "The loss did not move: a learning rate of 0" in out
    assert re.search(r"^loss_at_init\s+pass", out, re.M) and re.search(r"^batch_independence\s+pass", out, re.M)
    assert out.index("preflight FAILED") < out.index("step    0")  # the report comes before training


def test_demo_falls_back_to_a_temporary_folder_when_out_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--fault", "none", "--hold", "0", "--steps", "10",
                          "--out", str(blocker / "demo")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"cannot write to {blocker / 'demo'}; the history and report go to {tmp_path / 'nnwatch-demo'}" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == f"report: {tmp_path / 'nnwatch-demo' / 'report.html'}"

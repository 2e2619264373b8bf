"""The fleet benchmark's parts that need no servers: recorded ranks, their bodies, the scaled rules."""

from __future__ import annotations

import re

import pytest

from agent.ops.rules import RULES, render_groups
from benchmarks.fleet import planted, scaled_rules, seconds
from benchmarks.fleet_source import RankClock, record, render_template


@pytest.fixture(scope="module")
def recording():
    return record(layers=2, d_model=64, steps=10, sample_every=5)


def _series(body: bytes) -> list[str]:
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


def test_rank0_exports_per_module_series_and_other_ranks_only_scalars(recording):
    clock = RankClock(1000.0, 0.05, recording.batch, 5)
    rank0 = _series(render_template(recording, recording.healthy, 0, 8).fill(clock.values(1010.0)))
    rank3 = _series(render_template(recording, recording.healthy, 3, 8).fill(clock.values(1010.0)))
    assert any(line.startswith("nnwatch_gradient_norm{") for line in rank0)
    assert not any('module="' in line and 'module=""' not in line for line in rank3)
    assert all('rank="3"' in line for line in rank3)
    assert len(rank3) < len(rank0)


def test_dynamic_values_follow_the_rank_clock(recording):
    tpl = render_template(recording, recording.healthy, 1, 8)
    clock = RankClock(1000.0, 0.5, recording.batch, 5, forward_share=0.5)
    body = "\n".join(_series(tpl.fill(clock.values(1010.0))))
    assert re.search(r'^nnwatch_steps_total\{local_rank="1",rank="1"\} 20.0$', body, re.M)
    assert re.search(r'^nnwatch_last_step_timestamp_seconds\{local_rank="1",rank="1"\} 1010.0$', body, re.M)
    assert re.search(r'^nnwatch_forward_time_seconds_total\{local_rank="1",rank="1"\} 5.0$', body, re.M)
    assert "e+300" not in body  # every sentinel was filled in


def test_hung_rank_stops_and_straggler_does_more_own_work():
    hung = RankClock(0.0, 1.0, 8, 5, hung_at=10.0)
    assert hung.values(100.0)["steps"] == 10 and hung.values(100.0)["last_step_wall"] == 10.0
    slow = RankClock(0.0, 1.0, 8, 5, forward_share=0.5, slow_since=10.0, slow_factor=3.0)
    v = slow.values(20.0)
    assert v["step_time_total"] == 20.0  # DDP: the job steps together
    assert v["forward_total"] == 20 * 0.5 + 10 * 0.5 * 2


def test_nan_phase_reports_nonfinite_values(recording):
    body = "\n".join(_series(render_template(recording, recording.nan, 1, 8).fill(
        RankClock(0.0, 1.0, 8, 5).values(10.0))))
    counts = [float(v) for v in re.findall(r'^nnwatch_global_nonfinite_elements\{[^}]*\} (\S+)$', body, re.M)]
    assert sum(counts) > 0


def test_scaled_rules_divide_every_duration():
    shipped, scaled = render_groups(), scaled_rules(30, 0.5)
    assert [g["name"] for g in scaled] == [g["name"] for g in shipped]
    for g0, g1 in zip(shipped, scaled):
        assert g1["interval"] == "500ms"
        for r0, r1 in zip(g0["rules"], g1["rules"]):
            windows0 = re.findall(r"\[(\w+)\]", r0["expr"])
            windows1 = re.findall(r"\[(\w+)\]", r1["expr"])
            assert [seconds(w) / 30 for w in windows0] == pytest.approx([seconds(w) for w in windows1])
            if "for" in r0:
                assert seconds(r1["for"]) == pytest.approx(seconds(r0["for"]) / 30)
    stalled = next(r for r in scaled[0]["rules"] if r["alert"] == "NNWatchTrainingStalled")
    assert ", 4)" in stalled["expr"]  # min_seconds 120 / 30
    assert len(RULES) == sum(1 for g in scaled for r in g["rules"] if "alert" in r)


def test_faults_land_on_distinct_targets_off_rank_zero():
    for jobs, ranks in ((1, 4), (2, 100), (4, 1000)):
        where = planted(jobs, ranks)
        assert len(set(where.values())) == 3
        assert all(r != 0 and 0 <= j < jobs and r < ranks for j, r in where.values())

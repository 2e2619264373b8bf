"""The benchmark harness on a tiny model: interleaving, pairing, the estimators and the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import report
from benchmarks.floor import measure_floor
from benchmarks.models import MLP, Workload
from benchmarks.overhead import EVERY, OverheadResult, _ratio, run_overhead
from benchmarks.scaling import memory_point, render_point


def _tiny() -> Workload:
    def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(1)
        return [(torch.randn(16, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]

    return Workload("mlp", "tiny", lambda: MLP(32, depth=2), batches, nn.functional.cross_entropy)


@pytest.fixture(scope="module")
def result() -> OverheadResult:
    return run_overhead(_tiny(), ("plain", "control", "agent", "agent_all", "naive"), budget_s=0.0, reps=2,
                        min_rounds=40, log=False)


def test_rounds_pair_every_arm_with_the_plain_step_of_the_same_round(result):
    assert result.reps == 2 and result.rounds == 40
    assert len(result.steps["plain"]) == 80
    for arm in ("control", "agent"):
        assert len(result.steps[arm]) == len(result.paired[arm]) == len(result.index[arm]) == 80
    # Arms measured every 4th round only, still paired with that round's plain step.
    assert len(result.steps["agent_all"]) == 2 * 40 // EVERY["agent_all"]
    plain = result.steps["plain"]
    assert result.paired["agent_all"] == [plain[k] for k in range(80) if k % 40 % 4 == 0]
    assert result.paired["control"] == plain
    # Each repetition builds fresh arms: a step count restarts (after its warm-up) in the second one.
    first, second = result.index["control"][:40], result.index["control"][40:]
    assert first == second and first == sorted(first)


def test_agent_arms_record_sampled_steps_and_their_own_time(result):
    flags = result.sampled["agent"]
    assert len(flags) == 80 and 0 < sum(flags) < 80
    assert all(result.sampled["agent_all"])
    assert all(t >= 0 for t in result.agent_seconds["agent"])
    assert 0 < result.agent_share["agent"] < 1
    assert result.interval["agent"] >= 10  # the default budget only stretches the interval
    assert result.sample_interval("agent") == pytest.approx(80 / sum(flags))


def test_estimates_are_consistent(result):
    for arm in ("control", "agent", "agent_all", "naive"):
        r = result.ratio(arm)
        lo, hi = result.interval_95(arm)
        assert math.isfinite(r) and r > 0
        assert lo <= r <= hi
    assert result.ratio("plain") == 1.0
    est = result.decomposed("agent")
    assert est is not None and -0.5 < est < 5
    assert result.decomposed("agent_all") is None  # no unsampled steps to compare with
    assert result.sampled_extra_ms("agent_all") is not None and result.regular_us("agent") >= 0


def test_periodic_arm_is_amortized_over_its_period_whatever_the_window():
    # 150 steps of 10 ms, the 100th costs 510 ms; the plain loop 10 ms throughout.
    index = list(range(1, 151))
    steps = [0.510 if i == 100 else 0.010 for i in index]
    paired = [0.010] * 150
    assert _ratio(steps, paired, index, 100) == pytest.approx((99 * 0.010 + 0.510) / 100 / 0.010)
    assert _ratio(steps, paired, index, None) == pytest.approx(sum(steps) / sum(paired))
    with pytest.raises(ValueError, match="logging step"):
        _ratio(steps[:50], paired[:50], index[:50], 100)


def test_bad_arguments_fail_fast():
    with pytest.raises(ValueError, match="plain"):
        run_overhead(_tiny(), ("agent",), budget_s=0.0)
    with pytest.raises(ValueError, match="reps"):
        run_overhead(_tiny(), ("plain",), reps=0)


def test_report_renders_and_round_trips(result, tmp_path: Path):
    floor = measure_floor(_tiny(), reps=2)
    assert floor.tensors == 2 * 6 and floor.floor > 0 and floor.update_floor > 0 and floor.calls > 0
    results = {
        "machine": {"cpu": "test", "cores": 2, "torch_threads": 1, "memory_gib": 1.0, "os": "x", "python": "3",
                    "torch": torch.__version__, "cuda": None, "wandb": None, "nnwatch": "0"},
        "mode": "quick", "command": "pytest", "started": "now", "duration_s": 1.0, "load": [0.0, 0.0], "notes": [],
        "overhead": [result], "floor": [floor], "render": [render_point(3, renders=2)],
        "memory": [memory_point(_tiny())],
    }
    report.dump(results, tmp_path / "r.json")
    again = report.load(tmp_path / "r.json")
    assert again["overhead"][0].ratio("agent") == pytest.approx(result.ratio("agent"))
    md = report.markdown(again)
    assert "| mlp-tiny | " in md and "plain loop again (A/A control)" in md and "from its parts" in md
    assert " nan" not in md and "(nan" not in md and "| nan" not in md  # every figure was computed


def test_the_scrapes_section_is_replaced_in_place_and_kept_by_the_report(tmp_path):
    from benchmarks import scrapes

    row = {"ratio": 1.01, "requests_per_second": 240.0, "off_step_ms": 10.0}
    results = {"scrapers": 8, "rate_per_scraper": 30.0, "window_steps": 15, "pairs": 4, "model": "mlp-1M", "threads": 2,
               "agent": {**row, "renders": 3, "sampled_steps": 40, "threads_in_process": 3, "over_reference": 1.004},
               "separate_process": row}
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nbody\n")
    scrapes.write(results, tmp_path)
    scrapes.write({**results, "agent": {**results["agent"], "over_reference": 1.02}}, tmp_path)
    text = md.read_text()
    assert text.count(scrapes.BEGIN) == 1 and "+2.0%" in text and text.startswith("# Benchmarks\n\nbody\n")
    assert (tmp_path / "scrapes.json").exists()

"""The overhead budget: the controller on synthetic timings, the schedule, and a real monitor adapting."""

from __future__ import annotations

import math

import pytest
import torch

import agent
from agent.collect.budget import ForwardCost, OverheadController, SampleSchedule
from agent.config import Options
from agent.export.collector import NNWatchCollector
from prometheus_client import CollectorRegistry

from .helpers import SmallMLP, train


def simulate(ctrl: OverheadController, per_sample: float, per_step: float, step: float, rounds: int) -> list[tuple[int, float]]:
    """Feed the controller what an agent costing ``per_sample`` s per sample plus ``per_step`` s per step
    would measure on steps of ``step`` s; returns (interval, share) after each update."""
    out = []
    for _ in range(rounds):
        n = ctrl.interval
        agent_s = per_sample + n * per_step
        ctrl.update(agent_s, n * step + agent_s, n)
        out.append((ctrl.interval, agent_s / (n * step + agent_s)))
    return out


def test_converges_to_the_smallest_interval_within_budget():
    ctrl = OverheadController(0.01, initial=10)
    trace = simulate(ctrl, per_sample=0.05, per_step=0.0, step=0.1, rounds=12)
    # 50 ms per sample on 100 ms steps at 1%: every 50 steps or so (the step time seen includes the agent).
    assert [n for n, _ in trace[:2]] == [20, 40]  # at most doubling per update
    assert all(n == 50 for n, _ in trace[-5:])  # settled, no oscillation
    assert trace[-1][1] <= 0.01


def test_per_step_cost_moves_the_fixed_point_as_predicted():
    ctrl = OverheadController(0.02, initial=10)
    per_sample, per_step, step = 0.03, 0.0005, 0.1
    trace = simulate(ctrl, per_sample, per_step, step, rounds=30)
    expected = per_sample / (0.02 * (step + per_step) - per_step)  # n = c / (budget * step - b)
    assert trace[-1][0] == pytest.approx(expected, rel=0.1)
    assert trace[-1][1] <= 0.021


def test_hooks_alone_over_budget_climb_to_the_bound():
    ctrl = OverheadController(0.01, initial=10, max_interval=500)
    trace = simulate(ctrl, per_sample=0.01, per_step=0.002, step=0.1, rounds=20)  # 2% per step > 1%
    assert trace[-1][0] == 500


def test_loose_budget_samples_every_step():
    ctrl = OverheadController(0.5, initial=10)
    trace = simulate(ctrl, per_sample=0.001, per_step=0.0, step=0.1, rounds=8)
    assert trace[-1][0] == 1


def test_one_outlier_moves_the_interval_at_most_by_the_factor_and_is_forgotten():
    ctrl = OverheadController(0.01, initial=10)
    simulate(ctrl, per_sample=0.05, per_step=0.0, step=0.1, rounds=15)
    settled = ctrl.interval
    ctrl.update(50.0, settled * 0.1 + 50.0, settled)  # one absurd sample: 50 s
    assert ctrl.interval <= 2 * settled
    trace = simulate(ctrl, per_sample=0.05, per_step=0.0, step=0.1, rounds=15)
    assert trace[-1][0] == pytest.approx(settled, rel=0.15)


def test_bad_input_is_ignored_and_bad_settings_fail_fast():
    ctrl = OverheadController(0.01, initial=7)
    for args in [(0.1, 0.0, 5), (0.1, 1.0, 0), (math.nan, 1.0, 5), (0.1, math.inf, 5)]:
        assert ctrl.update(*args) == 7
    for budget in (0, 1, -0.1, 2.0, "1%"):
        with pytest.raises(ValueError, match="fraction"):
            OverheadController(budget, initial=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OverheadController(0.01, initial=10, min_interval=5, max_interval=2)


def test_fixed_schedule_keeps_the_global_step_phase():
    sched = SampleSchedule(10)
    assert [s for s in range(1, 41) if sched.next_sampled(s, 0.0, 0.0)] == [10, 20, 30, 40]
    assert sched.interval == 10 and sched.share is None


def test_budget_schedule_doubles_the_interval_on_aligned_steps():
    sched = SampleSchedule(4, overhead_budget=0.01)
    agent_s = step_s = 0.0
    sampled = []
    for k in range(1, 400):
        step_s += 0.1
        if sampled and sampled[-1] == k - 1:
            agent_s += 0.05  # the sample's work lands in the interval after it
        if sched.next_sampled(k, agent_s, step_s):
            sampled.append(k)
    gaps = [b - a for a, b in zip(sampled, sampled[1:])]
    assert gaps[0] == 4 and gaps[-1] == 32  # grew from sample_every to the largest level within 50 steps
    assert set(gaps) <= {4, 8, 16, 32} and all(s % g == 0 for s, g in zip(sampled[1:], gaps))  # aligned levels
    assert all(s % 4 == 0 for s in sampled) and sched.interval == 32
    assert all(g == 4 for s, g in zip(sampled[1:], gaps) if s <= 100)  # the level moves on the 100-step grid


def test_option_and_environment_variable():
    assert Options.resolve(env={"NNWATCH_OVERHEAD_BUDGET": "0.02"}).overhead_budget == 0.02
    assert Options.resolve(env={"NNWATCH_OVERHEAD_BUDGET": "none"}).overhead_budget is None
    with pytest.raises(ValueError, match="overhead_budget"):
        Options.resolve(env={}, overhead_budget=5)


def _gauge(monitor, name: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NNWatchCollector(monitor, extra_labels={}))
    return registry.get_sample_value(name)


def test_tight_budget_grows_the_interval_and_metrics_show_it():
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # A tiny model: the agent's sampled-step work is comparable to the step itself, so 0.1% forces the
    # interval far above its start.
    mon = agent.attach(model, opt, port=None, sample_every=2, overhead_budget=0.001)
    train(model, opt, 300, monitor=mon)
    assert mon.schedule.interval >= 16
    assert mon.sampled_steps < 50 + 200 / 8  # every 2nd step until the level changes at step 100, then >= 16
    assert _gauge(mon, "nnwatch_sample_interval_steps") == mon.schedule.interval
    ratio = _gauge(mon, "nnwatch_agent_overhead_ratio")
    assert ratio is not None and 0 <= ratio <= 1
    mon.close()


def test_loose_budget_never_samples_more_often_than_sample_every():
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=3, overhead_budget=0.9)
    train(model, opt, 60, monitor=mon)
    assert mon.schedule.interval == 3  # sample_every is the shortest interval
    assert _gauge(mon, "nnwatch_sample_interval_steps") == 3
    mon.close()


def test_default_is_a_budget_unless_an_interval_is_given(monkeypatch):
    model = SmallMLP()
    assert agent.attach(model, port=None).options.overhead_budget == 0.01
    assert agent.attach(model, port=None, sample_every=4).options.overhead_budget is None
    assert agent.attach(model, port=None, sample_every=4, overhead_budget=0.05).options.overhead_budget == 0.05
    monkeypatch.setenv("NNWATCH_SAMPLE_EVERY", "7")
    assert agent.attach(model, port=None).options.overhead_budget is None
    monkeypatch.delenv("NNWATCH_SAMPLE_EVERY")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tight = agent.attach(model, opt, port=None, overhead_budget=0.0001)
    train(model, opt, 120, monitor=tight)
    assert tight.schedule.interval > 10  # the default interval stretches when sampled steps cost too much


def test_without_a_budget_the_interval_is_fixed():
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=5)
    train(model, opt, 20, monitor=mon)
    assert mon.sampled_steps == 4 and mon.schedule.interval == 5
    assert _gauge(mon, "nnwatch_sample_interval_steps") == 5
    mon.close()


def test_agent_time_counts_nested_guarded_work_once():
    from agent.guard import Guard

    now = [0.0]
    guard = Guard(clock=lambda: now[0])

    def work() -> None:
        now[0] += 1.0

    guard.call("alone", work)  # outside any window: timed by the call
    assert guard.seconds == 1.0
    t0 = guard.enter(now[0])  # a hook timing itself
    guard.call("inside", work)  # not timed again
    now[0] += 0.5
    guard.leave(now[0] - t0)
    assert guard.seconds == 2.5
    guard.call("failing", lambda: 1 / 0)  # failures still leave the depth balanced
    t0 = guard.enter(now[0])
    guard.call("inside", work)
    guard.leave(now[0] - t0)
    assert guard.seconds == 3.5 and guard.errors["failing"] == 1


def test_forward_cost_is_the_robust_excess_of_sampled_forwards():
    cost = ForwardCost(window=8, recent=3, min_plain=3)
    assert cost.observe(0.013, sampled=True) == 0.0  # nothing to compare with yet
    for t in (0.010, 0.011, 0.009):
        assert cost.observe(t, sampled=False) == 0.0
    assert cost.observe(0.013, sampled=True) == pytest.approx(0.003)
    assert cost.observe(0.500, sampled=True) == pytest.approx(0.003 + (0.490 - 0.003) / 2)  # median of two
    assert cost.observe(0.012, sampled=True) == pytest.approx(0.003)  # one slow forward is outvoted
    for _ in range(3):
        cost.observe(0.008, sampled=True)  # faster than usual: never a negative charge
    assert cost.estimate == 0.0
    assert cost.observe(float("nan"), sampled=True) == 0.0 and cost.observe(-1.0, sampled=False) == 0.0


class _FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_probe_cost_inside_sampled_forwards_is_charged_to_the_agent():
    """A forward that takes 10 ms, 4 ms more while the activation probe is active (what its function mode
    costs around every op, where no agent timer sits): the agent charges those 4 ms to itself."""
    from agent.monitor import Monitor

    clock = _FakeClock()

    class Timed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.monitor = None

        def forward(self, x):
            clock.t += 0.010 + (0.004 if self.monitor is not None and self.monitor.probe.active else 0.0)
            return torch.relu(self.lin(x))

    torch.manual_seed(0)
    model = Timed()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, Options.resolve(port=None, sample_every=4), clock=clock, serve=False)
    model.monitor = mon
    x = torch.randn(8, 4)
    charged = []
    for _ in range(24):
        before = mon.guard.seconds
        sampled = mon._sampled
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        clock.t += 0.001
        if sampled:
            charged.append(mon.guard.seconds - before)
    assert mon.forward_cost.estimate == pytest.approx(0.004, abs=5e-4)
    # Every sampled step after the first few unsampled forwards carries the charge on top of its timed work.
    assert all(c >= 0.0035 for c in charged[2:]) and len(charged) == 6
    mon.close()

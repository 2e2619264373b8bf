"""The check engine over synthetic scalar histories: fires after hold, stays, resolves, warmup, stall watcher."""

from __future__ import annotations

import logging
import math
from collections import deque
from types import SimpleNamespace

import pytest

from agent.checks.catalogue import BY_NAME, CHECKS, alert_name, validate_catalogue
from agent.checks.engine import CheckEngine
from agent.config import Options
from agent.snapshot import ActivationStats, LayerStats, MemoryStats, Snapshot


class Recorder:
    def __init__(self):
        self.events = []

    def fired(self, f, consequences="", also=()):
        self.events.append(("fired", f.check, f.module, f.step))
        self.consequences = consequences

    def resolved(self, f, step):
        self.events.append(("resolved", f.check, f.module, step))

    def close(self):
        pass


def fake_monitor(last_step_wall=None, recent_step_seconds=(), **kw):
    steps = SimpleNamespace(last_step_wall=last_step_wall, recent_step_seconds=deque(recent_step_seconds))
    base = dict(val_history=[], constant_weights=(), steps=steps, step_index=0)
    base.update(kw)
    return SimpleNamespace(**base)


def layer(module="fc", grad=0.1, weight=1.0, update=1e-3, params=100, **kw):
    return LayerStats(module=module, params=params, grad_norm=grad, weight_norm=weight, update_norm=update,
                      grad_nonfinite=kw.get("grad_nonfinite", 0), weight_nonfinite=kw.get("weight_nonfinite", 0),
                      params_without_grad=kw.get("without", 0), in_optimizer=kw.get("in_optimizer", True))


def snap(step, **kw):
    kw.setdefault("layers", (layer(),))
    kw.setdefault("learning_rates", (1e-3,))
    return Snapshot(step=step, time=1000.0 + step, **kw)


def engine(**opts):
    rec = Recorder()
    eng = CheckEngine(Options(port=None, **opts), notifier=rec)
    eng._ensure_watcher = lambda monitor: None  # no thread in unit tests
    return eng, rec


def test_catalogue_is_complete_and_consistent():
    validate_catalogue()
    names = {c.name for c in CHECKS}
    assert names == {
        "nonfinite_values", "exploding_gradients", "vanishing_gradients", "dead_units", "saturated_activations",
        "loss_not_decreasing", "loss_at_init", "learning_rate_zero", "parameters_without_gradient",
        "weights_not_updating", "update_ratio_out_of_range", "gradients_not_cleared", "eval_in_train_mode",
        "overfitting", "constant_init", "memory_leak", "training_stalled", "loss_spike", "divergence",
        "probabilities_as_logits", "unshuffled_batches", "class_imbalance", "inputs_not_normalized",
        "repeated_batches", "graph_retained",
    }
    assert alert_name("dead_units") == "NNWatchDeadUnits"
    assert BY_NAME["nonfinite_values"].severity == "critical" and BY_NAME["training_stalled"].severity == "critical"
    assert BY_NAME["dead_units"].runbook_url.endswith("#nnwatchdeadunits")
    from agent.checks.conditions import CONDITIONS

    assert set(CONDITIONS) == names - {"training_stalled"}  # the stall watcher evaluates that one


def dead_snap(step, ratio):
    return snap(step, activations=(ActivationStats("act1", "relu", 64, ratio, None, 0),))


def test_fires_only_after_hold_then_stays_once_then_resolves():
    eng, rec = engine()
    mon = fake_monitor()
    hold = BY_NAME["dead_units"].hold
    for i in range(hold - 1):
        eng.evaluate(dead_snap(i * 10, 0.9), mon)
    assert eng.active() == [] and rec.events == []
    eng.evaluate(dead_snap((hold - 1) * 10, 0.9), mon)
    [f] = eng.active()
    assert (f.check, f.module, f.step, f.severity) == ("dead_units", "act1", 0, "warning")
    assert "90%" in f.message and "act1" in f.message and "Try:" in f.message
    for i in range(hold, hold + 5):
        eng.evaluate(dead_snap(i * 10, 0.8), mon)
    assert rec.events == [("fired", "dead_units", "act1", 0)]  # once while it holds
    assert eng.active()[0].value == 0.8  # the number stays current
    eng.evaluate(dead_snap(100, 0.1), mon)
    assert len(eng.active()) == 1  # hysteresis: one clean sample does not resolve it
    eng.evaluate(dead_snap(110, 0.1), mon)
    assert eng.active() == []
    assert rec.events[-1] == ("resolved", "dead_units", "act1", 110)
    assert eng.raised[("dead_units", "warning")] == 1


def test_interrupted_streak_does_not_fire():
    eng, rec = engine()
    mon = fake_monitor()
    for i, r in enumerate([0.9, 0.9, 0.1, 0.9, 0.9, 0.1]):
        eng.evaluate(dead_snap(i, r), mon)
    assert rec.events == []


def test_warmup_skips_early_samples():
    eng, rec = engine()
    mon = fake_monitor()
    c = BY_NAME["update_ratio_out_of_range"]
    for i in range(c.warmup + c.hold - 1):
        eng.evaluate(snap(i, layers=(layer(update=5.0),)), mon)
    assert not [e for e in rec.events if e[1] == c.name]
    eng.evaluate(snap(99, layers=(layer(update=5.0),)), mon)
    assert ("fired", c.name, None, c.warmup) in rec.events


def test_nonfinite_fires_immediately_and_is_critical_but_not_on_amp_skipped_steps():
    eng, rec = engine()
    mon = fake_monitor()
    eng.evaluate(snap(0, amp_skipped=True, layers=(layer(grad=math.inf, grad_nonfinite=3),)), mon)
    assert eng.active() == []
    eng.evaluate(snap(1, layers=(layer(grad=math.nan, grad_nonfinite=3),), loss=math.nan, loss_nonfinite=1), mon)
    [f] = [f for f in eng.active() if f.check == "nonfinite_values"]
    assert f.severity == "critical" and "4 non-finite loss/gradient values" in f.message and "fc" in f.message


def test_exploding_gradients_against_rolling_median_and_absolute():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(10):
        eng.evaluate(snap(i, layers=(layer(grad=1.0 + 0.1 * (i % 3)),)), mon)
    eng.evaluate(snap(10, layers=(layer(grad=50.0),)), mon)  # a single spike: not sustained
    eng.evaluate(snap(11, layers=(layer(grad=1.0),)), mon)
    assert not any(e[1] == "exploding_gradients" for e in rec.events)
    for i in range(12, 14):
        eng.evaluate(snap(i, layers=(layer(grad=100.0),)), mon)
    assert ("fired", "exploding_gradients", None, 12) in rec.events
    eng2, rec2 = engine()
    for i in range(5):
        eng2.evaluate(snap(i, layers=(layer(grad=1e6),)), mon)
    assert any(e[1] == "exploding_gradients" for e in rec2.events)


def test_vanishing_gradients_needs_the_rest_of_the_model_to_learn():
    eng, rec = engine()
    mon = fake_monitor()
    c = BY_NAME["vanishing_gradients"]
    for i in range(c.warmup + c.hold):
        eng.evaluate(snap(i, layers=(layer("early", grad=1e-9), layer("late", grad=0.1))), mon)
    assert [e[2] for e in rec.events if e[1] == "vanishing_gradients"] == ["early"]
    eng2, rec2 = engine()
    for i in range(c.warmup + c.hold):  # everything tiny: a converged model, not vanishing
        eng2.evaluate(snap(i, layers=(layer("a", grad=1e-9), layer("b", grad=1e-9))), mon)
    assert not any(e[1] == "vanishing_gradients" for e in rec2.events)


def test_loss_not_decreasing_and_its_resolution():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(25):
        eng.evaluate(snap(i, loss=2.3 + 0.01 * (i % 2)), mon)
    assert ("fired", "loss_not_decreasing", None, 19) in rec.events
    for i in range(25, 50):
        eng.evaluate(snap(i, loss=2.3 * 0.9 ** (i - 24)), mon)
    assert rec.events[-1][0:2] == ("resolved", "loss_not_decreasing")


def test_loss_not_decreasing_ignores_a_decreasing_loss_and_lr_warmup():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(40):
        eng.evaluate(snap(i, loss=2.3 * 0.97 ** i), mon)
    for i in range(40, 60):  # converged plateau far below the start: fine
        eng.evaluate(snap(i, loss=0.2), mon)
    eng2, rec2 = engine()
    for i in range(30):  # flat loss while the LR is still warming up
        eng2.evaluate(snap(i, loss=2.3, learning_rates=(1e-5 * i,)), mon)
    assert not any(e[1] == "loss_not_decreasing" for e in rec.events + rec2.events)


def test_loss_not_decreasing_stands_aside_for_a_loss_that_goes_negative():
    """A policy-gradient loss (-log p x normalised return) swings around 0: "improved -561% and still 661% of
    its start" means nothing. One logged loss below 0 (even inside an interval whose mean is positive) is enough."""
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(40):
        eng.evaluate(snap(i, loss=0.5 + 0.01 * (i % 2), loss_min=-0.2 if i == 3 else 0.4), mon)
    assert not any(e[1] == "loss_not_decreasing" for e in rec.events)
    eng2, rec2 = engine()  # the same flat curve, never negative: fires
    for i in range(40):
        eng2.evaluate(snap(i, loss=0.5 + 0.01 * (i % 2), loss_min=0.4), mon)
    assert any(e[1] == "loss_not_decreasing" for e in rec2.events)


@pytest.mark.parametrize("first,fires", [(2.30, False), (2.7, False), (3.2, True), (9.0, True), (0.3, True)])
def test_loss_at_init(first, fires):
    eng, rec = engine(num_classes=10)
    eng.evaluate(snap(0, first_loss=first, loss=first), fake_monitor())
    assert any(e[1] == "loss_at_init" for e in rec.events) == fires
    if fires:
        for i in range(1, 5):
            eng.evaluate(snap(i, first_loss=first, loss=1.0), fake_monitor())
        assert any(f.check == "loss_at_init" for f in eng.active())  # a fact about the start: stays


def test_loss_at_init_expected_value_option():
    eng, rec = engine(expected_initial_loss=0.25)
    eng.evaluate(snap(0, first_loss=0.26), fake_monitor())
    assert not rec.events
    eng, rec = engine(expected_initial_loss=0.25)
    eng.evaluate(snap(0, first_loss=5.0), fake_monitor())
    assert rec.events[0][1] == "loss_at_init"


def test_learning_rate_zero_after_warmup_and_sustained():
    eng, rec = engine()
    mon = fake_monitor()
    eng.evaluate(snap(0, learning_rates=(0.0,)), mon)  # warmup from 0
    for i in range(1, 5):
        eng.evaluate(snap(i, learning_rates=(1e-4 * i,)), mon)
    assert not any(e[1] == "learning_rate_zero" for e in rec.events)
    for i in range(5, 11):
        eng.evaluate(snap(i, learning_rates=(0.0, 1e-12)), mon)
    assert ("fired", "learning_rate_zero", None, 5) in rec.events


def test_module_checks_name_the_module():
    eng, rec = engine()
    mon = fake_monitor(constant_weights=("enc.0",))
    for i in range(4):
        eng.evaluate(snap(i, layers=(layer("used"), layer("unused", grad=None, update=None, without=2),
                                     layer("left_out", update=0.0, in_optimizer=False))), mon)
    fired = {(e[1], e[2]) for e in rec.events if e[0] == "fired"}
    assert ("parameters_without_gradient", "unused") in fired
    assert ("weights_not_updating", "left_out") in fired
    assert ("constant_init", "enc.0") in fired
    assert ("weights_not_updating", "used") not in fired
    msg = next(f.message for f in eng.active() if f.check == "weights_not_updating")
    assert "not in the optimizer" in msg


def test_gradients_not_cleared_and_eval_in_train_mode():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(3):  # what is left over equals what the previous sample consumed (grad norm 0.1): not cleared
        eng.evaluate(snap(i, uncleared_grad_norm=0.1, eval_in_train_forwards=2 * i), mon)
    fired = {e[1] for e in rec.events}
    assert {"gradients_not_cleared", "eval_in_train_mode"} <= fired
    quiet = int(BY_NAME["eval_in_train_mode"].thresholds["quiet_samples"])
    for i in range(3, 4 + quiet):
        eng.evaluate(snap(i, uncleared_grad_norm=0.0, eval_in_train_forwards=4), mon)
    resolved = {e[1] for e in rec.events if e[0] == "resolved"}
    assert {"gradients_not_cleared", "eval_in_train_mode"} <= resolved


def test_left_over_gradients_that_differ_from_the_consumed_ones_are_legitimate():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(6):  # a GAN: the generator's backward left other gradients in the discriminator
        eng.evaluate(snap(i, uncleared_grad_norm=0.37), mon)
    assert "gradients_not_cleared" not in {e[1] for e in rec.events}


def test_overfitting_needs_consecutive_rises_while_train_loss_falls():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(40):
        if i % 10 == 0:
            mon.val_history.append((i, [1.0, 0.9, 1.0, 1.1][i // 10]))  # fall, then two rises
        eng.evaluate(snap(i, loss=2.0 * 0.95 ** i), mon)
    assert ("overfitting" in {e[1] for e in rec.events}) is False  # only 2 rises so far
    mon.val_history.append((40, 1.5))
    eng.evaluate(snap(40, loss=0.2), mon)
    assert any(e[1] == "overfitting" for e in rec.events)


def test_memory_leak_on_steady_growth_only():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(20):  # noisy but flat
        eng.evaluate(snap(i * 10, memory=MemoryStats(host_rss=1e9 + (i % 3) * 4e6)), mon)
    assert not any(e[1] == "memory_leak" for e in rec.events)
    for i in range(20, 40):  # +8 MiB per sample, steady
        eng.evaluate(snap(i * 10, memory=MemoryStats(host_rss=1e9 + (i - 20) * 8 * 2**20)), mon)
    [f] = [f for f in eng.active() if f.check == "memory_leak"]
    assert "host" in f.message and "MiB" in f.message
    eng2, rec2 = engine()
    for i in range(20):
        eng2.evaluate(snap(i, memory=MemoryStats(host_rss=1e9, cuda_allocated={"0": 1e8 + i * 2**22})), mon)
    assert any("cuda:0" in f.message for f in eng2.active() if f.check == "memory_leak")


def test_training_stalled_learned_and_hard_limit():
    eng, rec = engine(stall_seconds=30.0)
    mon = fake_monitor(last_step_wall=1000.0, recent_step_seconds=[0.5] * 10, step_index=7)
    eng.check_stall(mon, now=1010.0)
    assert eng.active() == []
    eng.check_stall(mon, now=1031.0)  # over the hard limit
    [f] = eng.active()
    assert f.check == "training_stalled" and f.severity == "critical" and "31.0 s" in f.message
    mon.steps.last_step_wall = 1040.0
    eng.check_stall(mon, now=1040.5)
    assert eng.active() == [] and rec.events[-1][0] == "resolved"
    eng2, rec2 = engine()
    mon2 = fake_monitor(last_step_wall=0.0, recent_step_seconds=[10.0] * 5)
    eng2.check_stall(mon2, now=150.0)  # learned limit: max(120 s, 20 x 10 s) = 200 s
    assert eng2.active() == []
    eng2.check_stall(mon2, now=201.0)
    assert eng2.active()[0].check == "training_stalled"


def test_stall_watcher_thread_fires_without_training_thread(caplog):
    import time

    import agent
    from tests.helpers import SmallMLP, train
    import torch

    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1, stall_seconds=0.3)
    train(model, opt, 3, monitor=mon)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(f.check == "training_stalled" for f in mon.findings):
        time.sleep(0.05)
    assert any(f.check == "training_stalled" for f in mon.findings)
    assert any("training_stalled" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    train(model, opt, 1, monitor=mon)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(f.check == "training_stalled" for f in mon.findings):
        time.sleep(0.05)
    assert not any(f.check == "training_stalled" for f in mon.findings)
    mon.close()
    assert not mon.engine._watcher.is_alive()


def test_threshold_overrides():
    eng, rec = engine(thresholds={"dead_units.ratio": 0.95})
    mon = fake_monitor()
    for i in range(5):
        eng.evaluate(dead_snap(i, 0.9), mon)
    assert not rec.events


def _runaway(norms, losses, initial):
    eng, rec = engine()
    mon = fake_monitor(params=SimpleNamespace(initial_weight_norm=initial))
    for i, (w, loss) in enumerate(zip(norms, losses)):
        eng.evaluate(snap(i * 10, first_loss=2.3, loss=loss, layers=(layer(weight=w, update=w * 1e-3),)), mon)
    return [e for e in rec.events if e[1] == "divergence"]


def test_divergence_when_the_weights_are_thrown_out_and_the_loss_jumps_then_plateaus():
    # An LR 100x too high: the first steps multiply the weight norm (attach: 8.9) and the loss jumps from 2.3,
    # then the weights stop moving and the loss sits on a plateau (a collapsed model): no steady climb.
    fired = _runaway([32.6, 58.96, 58.955, 58.953, 58.95], [None, 132.0, 2.34, 2.33, 2.32], initial=8.9)
    assert fired and fired[0][:3] == ("fired", "divergence", None)


def test_no_divergence_for_a_tiny_init_that_grows_while_the_loss_falls():
    fired = _runaway([0.05, 0.2, 0.6, 1.2, 1.5], [None, 2.0, 1.5, 1.1, 0.9], initial=0.01)
    assert not fired
    fired = _runaway([10.0, 10.5, 11.0, 11.4, 11.8], [None, 2.5, 2.4, 2.6, 2.5], initial=9.8)  # noisy, no runaway
    assert not fired


def test_no_divergence_for_a_weight_edit_from_outside_the_optimizer():
    # A bias set to -20 between two steps (a planted fault, a bad checkpoint load): the norm jumps once, no
    # measured update explains it, then creeps up as training goes on; the loss rises as units die.
    eng, rec = engine()
    mon = fake_monitor(params=SimpleNamespace(initial_weight_norm=12.0))
    norms = [12.3, 12.31, 12.32, 139.0, 139.01, 139.02, 139.03]
    losses = [None, 0.06, 0.05, 0.12, 0.13, 0.12, 0.13]
    for i, (w, loss) in enumerate(zip(norms, losses)):
        eng.evaluate(snap(i * 10, first_loss=2.3, loss=loss, layers=(layer(weight=w, update=w * 1e-3),)), mon)
    assert not [e for e in rec.events if e[1] == "divergence"]


def _episodes(lengths, losses, norms):
    """An actor-critic whose loss is summed over an episode's time steps: the loss follows the episode length."""
    eng, rec = engine()
    mon = fake_monitor(params=SimpleNamespace(initial_weight_norm=norms[0]))
    for i, (n, loss, w) in enumerate(zip(lengths, losses, norms)):
        eng.evaluate(snap(i * 10, first_loss=losses[0], loss=loss, samples_per_step=n,
                          layers=(layer(weight=w, update=w * 1e-2),)), mon)
    return {e[1] for e in rec.events if e[0] == "fired"}


def test_a_loss_that_rises_with_the_data_per_step_is_neither_a_spike_nor_divergence():
    lengths = [10.0] * 14 + [40.0, 80.0, 120.0, 160.0]  # the policy starts to balance: longer episodes
    losses = [0.3 + 0.01 * (i % 3) for i in range(14)] + [4.0, 9.0, 13.0, 19.0]  # summed over the episode
    norms = [5.0 * 1.02 ** i for i in range(14)] + [6.6, 8.5, 11.0, 14.0]  # weights growing while learning
    assert not _episodes(lengths, losses, norms) & {"loss_spike", "divergence", "loss_not_decreasing"}
    # The same curves with a constant amount of data per step: the rise is the run's own.
    assert {"loss_spike", "divergence"} <= _episodes([10.0] * 18, losses, norms)


def _surrogate_run(norms, losses, initial):
    eng, rec = engine()
    mon = fake_monitor(params=SimpleNamespace(initial_weight_norm=initial))
    for i, (w, loss) in enumerate(zip(norms, losses)):
        eng.evaluate(snap(i * 10, first_loss=0.1, loss=loss, loss_min=-0.5 if i == 1 else None,
                          layers=(layer(weight=w, update=w * 1e-3),)), mon)
    return rec, eng


def test_a_surrogate_loss_below_zero_is_judged_by_the_weights_alone():
    # A policy-gradient loss swinging around 0: its rise (0.1 -> 3e-14 -> 6e-14, or 132x) says nothing.
    rec, _ = _surrogate_run([9.0, 9.5, 10.4, 11.2, 12.0], [None, 0.4, 13.0, 0.2, 5.0], initial=8.9)
    assert not {e[1] for e in rec.events} & {"divergence", "loss_spike"}
    # Weights thrown out several-fold by the updates (an LR 100x too high): divergence, said without the loss.
    rec, eng = _surrogate_run([32.6, 58.96, 58.955, 58.953, 58.95], [None, 3e-14, 6e-14, 5e-14, 6e-14], initial=8.9)
    assert ("fired", "divergence", None, 10) in rec.events or any(e[:2] == ("fired", "divergence") for e in rec.events)
    message = next(f.message for f in eng.incidents.active.values() if f.check == "divergence")
    assert "went below 0" in message and "loss rose" not in message

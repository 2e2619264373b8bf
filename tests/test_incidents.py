"""The cause first, its consequences under it, no floods, every finding in history (agent.checks.incidents)."""

from __future__ import annotations

import logging
import re
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

import agent
from agent.checks.engine import CheckEngine
from agent.config import Options
from tests.test_notify import Receiver
from tests.helpers import SmallMLP, train
from tests.test_checks import Recorder, dead_snap, fake_monitor, snap


def _finding_lines(caplog) -> list[str]:
    """Finding lines (other tests' monitors still alive make lines name their model: ``nnwatch (Name) [...]``)."""
    return [r.getMessage() for r in caplog.records if re.match(r"nnwatch( \(.+?\))? \[(warning|critical|info)\]", r.getMessage())]


def engine():
    rec = Recorder()
    eng = CheckEngine(Options.resolve(port=None), notifier=rec)
    eng._ensure_watcher = lambda monitor: None
    return eng, rec


def _nan_with_dead_units(eng, mon, samples):
    for i in samples:
        acts = dead_snap(i * 10, 0.9).activations
        eng.evaluate(snap(i * 10, loss=float("nan"), loss_nonfinite=1, activations=acts), mon)


def test_a_nan_explains_the_dead_units_it_causes():
    eng, rec = engine()
    mon = fake_monitor()
    _nan_with_dead_units(eng, mon, range(6))
    assert [e[1] for e in rec.events] == ["nonfinite_values"]  # one line for the incident
    assert [f.check for f in eng.active()] == ["nonfinite_values"]
    [cause, effect] = sorted(eng.incidents.history(), key=lambda r: r.check != "nonfinite_values")
    assert cause.consequences == [("dead_units", "act1")] and effect.explained_by == ("nonfinite_values", None)


def test_a_finding_older_than_the_nan_is_not_its_consequence():
    eng, rec = engine()
    mon = fake_monitor()
    for i in range(3):  # dead units alone: a finding of its own
        eng.evaluate(dead_snap(i * 10, 0.9), mon)
    _nan_with_dead_units(eng, mon, range(3, 5))  # a later NaN cannot have caused them
    assert [e[1] for e in rec.events] == ["dead_units", "nonfinite_values"]


def test_a_consequence_waits_for_its_slower_cause_and_is_listed_in_its_line():
    from tests.test_checks import layer

    eng, rec = engine()
    mon = fake_monitor()
    huge = (layer("fc", grad=0.5, weight=1.0, update=0.5),)  # every update rewrites half the weights
    for i in range(12):  # dead units (hold 3) are ready long before the update ratio (warm-up 3, hold 8)
        eng.evaluate(snap(i * 10, layers=huge, activations=dead_snap(i * 10, 0.9).activations), mon)
    assert [e[1] for e in rec.events] == ["update_ratio_out_of_range"]  # the cause, first and alone
    assert rec.consequences == "dead_units in act1"


def test_a_flapping_finding_logs_once_per_window_and_history_keeps_it():
    eng, rec = engine()
    mon = fake_monitor()
    step = 0
    for _ in range(10):  # 3 samples dead, 2 clean: fires, resolves, fires again...
        for ratio in (0.9, 0.9, 0.9, 0.1, 0.1):
            eng.evaluate(dead_snap(step, ratio), mon)
            step += 10
    fired = [e for e in rec.events if e[0] == "fired"]
    assert len(fired) <= 3, rec.events  # 500 steps, re-log window 200 steps
    [record] = eng.incidents.history()
    assert record.fired == 10 and record.logged == len(fired) and record.peak == 0.9
    assert record.resolved_step == step - 10


def test_a_borderline_value_does_not_flap():
    eng, rec = engine()
    mon = fake_monitor()
    for i, ratio in enumerate([0.9, 0.9, 0.9, 0.4, 0.9, 0.4, 0.9, 0.4, 0.9]):
        eng.evaluate(dead_snap(i * 10, ratio), mon)
    assert [e[0] for e in rec.events] == ["fired"]  # one clean sample never resolves it


def test_summary_names_the_cause_and_its_consequences():
    eng, _ = engine()
    mon = fake_monitor()
    _nan_with_dead_units(eng, mon, range(6))
    text = eng.incidents.summary(60)
    assert text.startswith("nnwatch: 1 finding(s) in 60 steps: nonfinite_values [critical]")
    assert "explains dead_units" in text


def _lr_zero_group_run(caplog):
    torch.manual_seed(0)
    model = SmallMLP()
    head = list(model.parameters())[-2:]
    body = list(model.parameters())[:-2]
    opt = torch.optim.SGD([{"params": body, "lr": 0.05}, {"params": head, "lr": 0.0}])
    with caplog.at_level(logging.INFO, logger="nnwatch"):
        mon = agent.attach(model, opt, port=None, sample_every=2)
        train(model, opt, 60, monitor=mon)
        mon.close()
    return mon, _finding_lines(caplog)


def test_a_param_group_at_lr_zero_is_named_as_the_cause(caplog):
    mon, lines = _lr_zero_group_run(caplog)
    assert lines and "learning_rate_zero" in lines[0], lines
    assert not any("] weights_not_updating" in line for line in lines), lines
    assert any(r.check == "learning_rate_zero" for r in mon.history)


def test_tiny_gradients_are_not_called_missing_from_the_optimizer():
    eng, _ = engine()
    mon = fake_monitor()
    from tests.test_checks import layer

    for i in range(8):  # in the optimizer, update rounds to zero: lr * g / w = 1e-3 * 1e-6 / 1 << fp32 resolution
        eng.evaluate(snap(i * 10, layers=(layer("deep.0", grad=1e-6, weight=1.0, update=0.0),
                                          layer("head", grad=1.0, weight=1.0, update=1e-3)),
                          learning_rates=(1e-3,)), mon)
    assert "weights_not_updating" not in {f.check for f in eng.active()}
    for i in range(8, 12):  # left out of the optimizer: its update is exactly zero with a real gradient
        eng.evaluate(snap(i * 10, layers=(layer("deep.0", grad=0.5, weight=1.0, update=0.0, in_optimizer=False),),
                          learning_rates=(1e-3,)), mon)
    assert "weights_not_updating" in {f.check for f in eng.active()}


def test_close_summarises_and_names_models_when_several(caplog):
    a, b = SmallMLP(), nn.Sequential(nn.Linear(64, 10))
    with caplog.at_level(logging.INFO, logger="nnwatch"):
        opt = torch.optim.SGD(a.parameters(), lr=0.01)
        ma = agent.attach(a, opt, port=None, name="generator")
        mb = agent.attach(b, port=None, name="discriminator")  # no optimizer and no step(): watches nothing
        train(a, opt, 3, monitor=ma)
        mb.close()
        ma.close()
    text = [r.getMessage() for r in caplog.records]
    assert any("nnwatch (discriminator): watched 0 steps" in t for t in text), text
    assert any(t.startswith("nnwatch (generator): no findings in 3 steps") for t in text), text


def test_info_lines_show_by_default_without_logging_config(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch, agent
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = agent.attach(model, opt, port=0)
        for _ in range(3):
            opt.zero_grad(); model(torch.randn(8, 4)).sum().backward(); opt.step()
        monitor.close()
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNWATCH_")}
    env.update(PYTHONPATH=str(Path(agent.__file__).parents[1]), NNWATCH_NATIVE="0")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "INFO nnwatch: serving metrics at http://127.0.0.1:" in run.stderr
    assert "INFO nnwatch: no findings in 3 steps" in run.stderr
    quiet = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                           env={**env, "NNWATCH_CONSOLE_LOG": "0"})
    assert quiet.returncode == 0 and "serving metrics" not in quiet.stderr


def test_a_very_deep_relu_stack_is_one_incident_not_a_flood(caplog):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(60):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level(logging.INFO, logger="nnwatch"):
        mon = agent.attach(model, opt, port=None)
        train(model, opt, 200, monitor=mon, d_in=32)
        mon.close()
    lines = _finding_lines(caplog)
    assert 1 <= len(lines) <= 3, lines  # was one warning per layer and check, and as many resolutions
    summary = [r.getMessage() for r in caplog.records if "finding(s) in 200 steps" in r.getMessage()]
    assert summary and len(summary[0]) < 600, summary


def test_a_loss_that_is_nan_every_other_pair_of_steps_is_one_incident(caplog):
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level(logging.INFO, logger="nnwatch"):
        receiver = Receiver()  # a local stand-in for Slack
        mon = agent.attach(model, opt, port=None, webhook_url=receiver.url)
        for step in range(1200):
            opt.zero_grad()
            loss = model(torch.randn(8, 16)).square().mean()
            loss.backward()
            opt.step()
            mon.log(loss=loss * math.nan if step % 4 < 2 else loss)  # NaN on 2 of every 4 steps
        mon.close()
    lines = _finding_lines(caplog)
    assert len(lines) <= 2 and "nonfinite_values" in lines[0], lines  # was 600 lines and 600 webhook posts
    receiver.close()
    assert 1 <= len(receiver.posts) <= 2, [p["text"] for p in receiver.posts]
    assert "nonfinite_values" in receiver.posts[0]["text"]
    [record] = [r for r in mon.history if r.check == "nonfinite_values"]
    assert record.first_step <= 3

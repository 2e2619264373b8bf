"""The generated alert rules: drift, promtool check/test, coverage of the catalogue, RulesConfig."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.checks.catalogue import CHECKS
from agent.ops.rules import ALERTS, RULES, RulesConfig, default_params, generate, render_groups, render_yaml
from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "alerts" / "nnwatch.rules.yml"
UNIT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))
FLEET = {"NNWatchExporterDown", "NNWatchTrainingStalled", "NNWatchRankDesync", "NNWatchStragglerRank",
         "NNWatchThroughputDrop", "NNWatchGPUMemoryNearCapacity"}


def _alerts(groups: list[dict]) -> list[dict]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_committed_rules_are_up_to_date(tmp_path: Path) -> None:
    (written,) = generate(tmp_path)
    assert written.read_text() == RULES_FILE.read_text(), "alerts/nnwatch.rules.yml is stale: run `nnwatch generate`"


def test_every_check_and_fleet_rule_has_an_alert() -> None:
    names = {r["alert"] for r in _alerts(render_groups())}
    assert {c.alert for c in CHECKS} | FLEET <= names
    assert names == set(ALERTS)


def test_every_alert_has_for_severity_and_annotations() -> None:
    by_check = {c.alert: c for c in CHECKS}
    for rule in _alerts(render_groups()):
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "value", "runbook_url"}
        assert ann["summary"].endswith(".") and "{{" not in ann["summary"]
        assert "$labels.job" in ann["description"] or "$labels.instance" in ann["description"]
        assert ann["runbook_url"].endswith("#" + rule["alert"].lower())
        check = by_check.get(rule["alert"])
        if check is not None:
            assert rule["for"] == check.prometheus_for
            assert rule["labels"]["severity"] == check.severity
            assert ann["summary"] == check.summary
            assert ann["runbook_url"] == check.runbook_url


def test_module_alerts_name_the_layer() -> None:
    module_checks = {c.alert for c in CHECKS if c.scope == "module"}
    for rule in _alerts(render_groups()):
        if rule["alert"] in module_checks:
            assert "$labels.module" in rule["annotations"]["description"], rule["alert"]


def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool")
    out = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in render_groups())} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    out = subprocess.run([promtool, "test", "rules", *map(str, UNIT_TESTS)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_before_and_after_for() -> None:
    """Each alert is evaluated at least twice with no alert and with exact alerts (the before/after pair)."""
    seen: dict[str, list[bool]] = {}
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                seen.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
                for alert in case.get("exp_alerts") or []:
                    assert {"summary", "description", "value", "runbook_url"} <= set(alert["exp_annotations"])
    for name in ALERTS:
        assert name in seen, f"{name} has no promtool unit test"
        assert True in seen[name] and False in seen[name], f"{name} needs a firing and a not-firing evaluation"


def test_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The promtool wrapper really detects a wrong annotation (guards against a vacuous test)."""
    promtool = require_binary("promtool")
    text = (ROOT / "alerts" / "tests" / "nnwatch.rules.test.yml").read_text().replace("value: 75%", "value: 74%")
    (tmp_path / "alerts" / "tests").mkdir(parents=True)
    (tmp_path / "alerts" / "nnwatch.rules.yml").write_text(RULES_FILE.read_text())
    bad = tmp_path / "alerts" / "tests" / "bad.test.yml"
    bad.write_text(text)
    out = subprocess.run([promtool, "test", "rules", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "NNWatchDeadUnits" in out.stdout + out.stderr


def test_config_changes_selector_thresholds_durations_and_runbooks() -> None:
    config = RulesConfig(selector='namespace="ml", job=~"train-.*"', thresholds={"dead_units.ratio": 0.3},
                         for_durations={"NNWatchDeadUnits": "1h"}, runbook_base_url="https://wiki.example/runbooks",
                         extra_labels={"team": "ml"}, interval="30s")
    groups = render_groups(config)
    dead = next(r for r in _alerts(groups) if r["alert"] == "NNWatchDeadUnits")
    assert dead["expr"] == 'nnwatch_activation_dead_ratio{namespace="ml", job=~"train-.*"} >= 0.3'
    assert dead["for"] == "1h"
    assert dead["labels"] == {"severity": "warning", "team": "ml"}
    assert dead["annotations"]["runbook_url"] == "https://wiki.example/runbooks#nnwatchdeadunits"
    assert all(g["interval"] == "30s" for g in groups)
    for rule in _alerts(groups) + [r for g in groups for r in g["rules"] if "record" in r]:
        for selector in re.findall(r"nnwatch_[a-z_]+\{([^}]*)\}", rule["expr"]):
            assert 'namespace="ml"' in selector, rule


def test_strings_are_inserted_verbatim_for_helm() -> None:
    """The Helm chart passes template expressions; they must land unchanged in expr and for."""
    helm_ratio = "{{ .Values.rules.thresholds.dead_units.ratio }}"
    helm_for = "{{ .Values.rules.for.NNWatchDeadUnits }}"
    groups = render_groups(RulesConfig(thresholds={"dead_units.ratio": helm_ratio},
                                       for_durations={"NNWatchDeadUnits": helm_for}))
    dead = next(r for r in _alerts(groups) if r["alert"] == "NNWatchDeadUnits")
    assert dead["expr"].endswith(f">= {helm_ratio}")
    assert dead["for"] == helm_for


def test_every_threshold_reaches_an_expression() -> None:
    """A threshold that no expression reads would be a knob that does nothing."""
    unused_by_prometheus = {  # sample-count knobs of the in-process engine; PromQL uses time windows instead
        "exploding_gradients.history", "exploding_gradients.min_history", "vanishing_gradients.rms",
        "loss_not_decreasing.window", "loss_not_decreasing.min_improvement", "loss_not_decreasing.near_start",
        "eval_in_train_mode.quiet_samples", "overfitting.rises", "overfitting.min_rise", "memory_leak.samples",
        "loss_spike.factor", "loss_spike.mads", "loss_spike.history", "loss_spike.min_history",
        "divergence.growth", "divergence.window", "divergence.min_step_growth", "divergence.loss_rise",
        "divergence.strong_growth", "divergence.strong_loss_rise", "gradients_not_cleared.min_norm",
        "gradients_not_cleared.match",
        "memory_leak.min_growth_bytes", "memory_leak.rising_fraction",
        # the data checks alert on the agent's own finding (nnwatch_finding_value): their knobs act in-process
        "unshuffled_batches.samples", "unshuffled_batches.fraction", "class_imbalance.ratio",
        "class_imbalance.min_labels_per_class", "class_imbalance.min_samples", "inputs_not_normalized.rms",
        "inputs_not_normalized.feature_ratio", "repeated_batches.samples", "graph_retained.graphs",
    }
    for key in default_params():
        if key in unused_by_prometheus:
            continue
        marker = "424242.5"
        base = render_yaml(RulesConfig())
        assert marker not in base
        assert marker in render_yaml(RulesConfig(thresholds={key: marker})), key


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="dead_units.ratio"):
        RulesConfig(thresholds={"dead_units.ratoi": 0.3})
    with pytest.raises(ValueError, match="NNWatchDeadUnits"):
        RulesConfig(for_durations={"NNWatchDeadUnit": "5m"})


def test_expected_jobs_alert_on_absent_targets(tmp_path: Path) -> None:
    """With expected_jobs, NNWatchExporterDown also fires when the job has no target at all."""
    promtool = require_binary("promtool")
    (tmp_path / "rules.yml").write_text(render_yaml(RulesConfig(expected_jobs=("nnwatch-train",))))
    (tmp_path / "t.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": 'up{job="nnwatch-other",instance="o:1"}', "values": "1x20"},
                             {"series": 'nnwatch_build_info{job="nnwatch-other",instance="o:1"}', "values": "1x20"}],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "NNWatchExporterDown", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "NNWatchExporterDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "job": "nnwatch-train"},
                    "exp_annotations": {
                        "summary": "The nnwatch exporter of a training job cannot be scraped.",
                        "description": "Job nnwatch-train serves no nnwatch metrics.",
                        "value": "1",
                        "runbook_url": "https://github.com/nnwatch/nnwatch/blob/main/docs/runbooks.md#nnwatchexporterdown",
                    }}]},
            ],
        }],
    }))
    out = subprocess.run([promtool, "test", "rules", "t.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_command_prints_overridden_rules(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    assert main(["rules", "--selector", 'job="a"', "--threshold", "dead_units.ratio=0.25",
                 "--for", "NNWatchDeadUnits=2m"]) == 0
    text = capsys.readouterr().out
    groups = yaml.safe_load(text)["groups"]
    dead = next(r for r in _alerts(groups) if r["alert"] == "NNWatchDeadUnits")
    assert dead["expr"] == 'nnwatch_activation_dead_ratio{job="a"} >= 0.25' and dead["for"] == "2m"
    # custom output says how to regenerate it: the command line that made it
    assert text.startswith("# Generated by nnwatch ") and "#     nnwatch rules --selector 'job=\"a\"'" in text
    assert "nnwatch generate" not in text.split("groups:", 1)[0]


def test_rules_command_output_passes_promtool(tmp_path: Path) -> None:
    from agent.cli import main

    promtool = require_binary("promtool")
    out = tmp_path / "custom.rules.yml"
    assert main(["rules", "--selector", 'namespace="ml", job=~"train-.*"', "--target-selector", 'job="x"',
                 "--threshold", "dead_units.ratio=0.3", "--threshold", "exploding_gradients.window=1h",
                 "--threshold", "straggler_rank.factor=2", "--for", "NNWatchDeadUnits=30m", "--interval", "30s",
                 "--expect-job", "train", "--runbook-base-url", "https://wiki.example/runbooks", "-o", str(out)]) == 0
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "https://wiki.example/runbooks#nnwatchdeadunits" in out.read_text()


@pytest.mark.parametrize("argv, says", [
    (["--threshold", "dead_units.ratio=lots"], "'lots' is not a number"),
    (["--threshold", "dead_units.ratio=5"], "fraction in 0..1"),
    (["--threshold", "dead_units.ratio=nan"], "finite"),
    (["--threshold", "memory_leak.samples=2.5"], "whole number"),
    (["--threshold", "straggler_rank.factor=0.5"], "factor above 1"),
    (["--threshold", "gpu_memory_near_capacity.warning_ratio=90"], "ratio in (0, 1]"),
    (["--threshold", "exploding_gradients.window=3"], "not a Prometheus duration"),
    (["--threshold", "no_such.thing=1"], "unknown threshold"),
    (["--threshold", "dead_units.ratio"], "expects KEY=VALUE"),
    (["--selector", "namespace=ml"], "not a list of PromQL label matchers"),
    (["--selector", 'job=~"a("'], "does not compile"),
    (["--selector", 'job="a",'], "ends with a comma"),
    (["--target-selector", "up"], "not a list of PromQL label matchers"),
    (["--for", "NNWatchDeadUnits=soon"], "not a Prometheus duration"),
    (["--for", "NNWatchNope=5m"], "unknown alert"),
    (["--interval", "5"], "not a Prometheus duration"),
    (["--interval", "0s"], "longer than 0"),
    (["-o", "/nonexistent/dir/x.yml"], "does not exist"),
    (["-o", "/tmp"], "is a directory"),
    (["--runbook-base-url", "wiki/runbooks"], "is not a URL"),
])
def test_rules_command_rejects_bad_input_with_one_line_and_status_2(argv: list[str], says: str) -> None:
    import sys

    out = subprocess.run([sys.executable, "-m", "agent.cli", "rules", *argv], capture_output=True, text=True)
    assert out.returncode == 2, out.stdout[-300:] + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnwatch rules: error: ") and says in lines[0], out.stderr
    assert out.stdout == ""


def test_header_documents_the_signal_of_every_rule() -> None:
    header = RULES_FILE.read_text().split("groups:", 1)[0]
    for rule in RULES:
        assert f"# {rule.key} (" in header
    assert header.count("agent finding") >= 3


def test_every_alert_has_a_runbook_section() -> None:
    text = (ROOT / "docs" / "runbooks.md").read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    assert set(sections) == set(ALERTS)
    for rule in _alerts(render_groups()):
        # GitHub's anchor of "## NNWatchDeadUnits" is #nnwatchdeadunits: the runbook_url fragment.
        assert rule["annotations"]["runbook_url"].rsplit("#", 1)[1] == rule["alert"].lower()
        body = sections[rule["alert"]]
        for part in ("**What it means.**", "**Usual causes.**", "**How to confirm.**", "**What to try.**"):
            assert part in body, (rule["alert"], part)

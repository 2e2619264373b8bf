"""The Helm chart (helm/nnwatch), rendered and linted offline with helm-python-sdk (Helm v4), core kinds
validated with kubernetes-validate, and the example training Job (examples/k8s)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmError

from agent.ops import chart as agent_chart
from agent.ops import dashboards as dash
from agent.ops import rules as agent_rules
from agent._version import __version__
from agent.config import DEFAULT_PORT, Options
from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "nnwatch"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
EXAMPLE = ROOT / "examples" / "k8s" / "training-job.yaml"
POD_LABEL = {"nnwatch.io/scrape": "true"}
"""The documented pod label (docs/kubernetes.md, NOTES.txt, examples/k8s)."""
KUBE_VERSION = "1.30"
CORE_KINDS = {"ConfigMap", "Job", "Secret", "Service", "Deployment", "Pod"}
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"}


def scenario(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def render(values: dict[str, Any] | None = None, name: str = "nnwatch", namespace: str = "monitoring"
           ) -> tuple[list[dict[str, Any]], str]:
    """(objects, NOTES text) of the chart rendered offline."""
    out = Chart.load(CHART).render(values=values or {}, name=name, namespace=namespace)
    notes = "".join(v for k, v in out.items() if k.endswith("NOTES.txt"))
    objects = [d for k, v in out.items() if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(v) if d]
    return objects, notes


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def default() -> tuple[list[dict[str, Any]], str]:
    return render()


# --- chart hygiene ---------------------------------------------------------------------------------


def test_committed_chart_matches_the_generator(tmp_path: Path) -> None:
    written = agent_chart.generate(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert names == {f"helm/nnwatch/dashboards/{name}" for name in dash.FILES.values()} | {
        "helm/nnwatch/templates/prometheusrule.yaml", "helm/nnwatch/values.yaml", "helm/nnwatch/values.schema.json"}
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (ROOT / rel).is_file(), f"{rel} is not committed; run `nnwatch generate`"
        assert (ROOT / rel).read_text() == path.read_text(), f"{rel} is stale; run `nnwatch generate`"


def test_lint_strict() -> None:
    report = lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_lint_strict_with_each_scenario(name: str) -> None:
    report = lint(CHART, values=scenario(name), strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "nnwatch"
    assert meta["appVersion"] == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])


def test_helpers_are_chart_prefixed_and_commented() -> None:
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    defines = re.findall(r'\{\{-? define "([^"]+)"', text)
    assert defines and all(d.startswith("nnwatch.") for d in defines)
    for d in defines:  # a comment block right above every define
        assert re.search(r'\*/\}\}\n\{\{-? define "' + re.escape(d) + '"', text), d


def test_every_value_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = 0
    for k, line in enumerate(lines):
        if re.match(r"^\s*[\w.\-/]+:", line):  # a mapping key (list items belong to the key above them)
            keys += 1
            prev = next(p for p in reversed(lines[:k]) if p.strip())
            assert prev.lstrip().startswith("#"), f"values.yaml line {k + 1} has no comment above it: {line!r}"
    assert keys > 80


def test_schema_describes_every_value_and_matches_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        assert node.get("description"), f"{path or 'root'}: no description"
        props = node.get("properties")
        if props is None or not isinstance(value, dict):
            return
        assert set(value) <= set(props), f"{path}: values.yaml keys missing from the schema: {set(value) - set(props)}"
        for key, sub in props.items():
            walk(sub, value.get(key), f"{path}.{key}".lstrip("."))

    schema["description"] = schema.get("description", schema["title"])
    walk(schema, values, "")
    Chart.load(CHART).validate_schema(values)


@pytest.mark.parametrize("bad", [
    {"podMonitor": {"portNames": "nnwatch"}},
    {"podMonitor": {"interval": "soon"}},
    {"rules": {"thresholds": {"dead_units": {"ratio": True}}}},
    {"rules": {"durations": {"NNWatchDeadUnits": "15 minutes"}}},
    {"alertmanagerConfig": {"slack": {"webhookURL": "https://hooks.slack.com/services/T/B/X"}}},
    {"alertmanagerConfig": {"pagerduty": {"routingKey": "0123456789abcdef"}}},
    {"dashbords": {"enabled": False}},
], ids=["portNames-not-a-list", "bad-duration", "bool-threshold", "bad-for", "slack-url-in-values",
        "pagerduty-key-in-values", "typo"])
def test_schema_rejects_bad_values_and_inline_secrets(bad: dict[str, Any]) -> None:
    with pytest.raises(HelmError):
        render(bad)


# --- every scenario renders valid objects ------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_renders_valid_objects(name: str) -> None:
    objects, notes = render(scenario(name), namespace="ml")
    assert "nnwatch" in notes
    for o in objects:
        meta = o["metadata"]
        assert len(meta["name"]) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
        assert meta["namespace"] == "ml"
        assert meta["labels"]["app.kubernetes.io/name"] == "nnwatch"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if o["kind"] in CORE_KINDS:
            kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
        assert o["kind"] != "Secret", "the chart must never carry credentials"
        assert o["kind"] not in POD_KINDS, "the chart runs no pods"
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names))


# --- PodMonitor --------------------------------------------------------------------------------------


def test_podmonitor_selects_the_documented_pod_label(default: tuple[list[dict[str, Any]], str]) -> None:
    pm = one(default[0], "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["selector"] == {"matchLabels": POD_LABEL}
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "nnwatch" and ep["path"] == "/metrics" and ep["interval"] == "15s"
    jobs = [r for r in ep["relabelings"] if r["targetLabel"] == "job"]
    assert [r["sourceLabels"] for r in jobs] == [["__meta_kubernetes_pod_label_batch_kubernetes_io_job_name"],
                                                  ["__meta_kubernetes_pod_label_nnwatch_io_job"]]
    assert all(r["replacement"] == "nnwatch/$1" and r["regex"] == "(.+)" for r in jobs)
    # Job names the PodMonitor gives match the default target selector of NNWatchExporterDown.
    target = re.search(r'job=~"([^"]+)"', agent_rules.RulesConfig().target_selector).group(1)
    assert re.fullmatch(target, "nnwatch/digits-train") and re.fullmatch(target, "ml/nnwatch")


def test_podmonitor_should_not_render_basic_auth_by_default(default: tuple[list[dict[str, Any]], str]) -> None:
    for e in one(default[0], "PodMonitor")["spec"]["podMetricsEndpoints"]:
        assert "basicAuth" not in e


def test_podmonitor_distributed_scenario() -> None:
    pm = one(render(scenario("distributed-values.yaml"))[0], "PodMonitor")
    eps = pm["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in eps] == ["nnwatch", "nnwatch-1", "nnwatch-2", "nnwatch-3"]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml-research", "ml-prod"]}
    assert pm["spec"]["podTargetLabels"] == ["team", "experiment"]
    for e in eps:
        assert e["scheme"] == "https" and e["tlsConfig"]["ca"]["secret"]["name"] == "nnwatch-ca"
        assert e["basicAuth"] == {"username": {"name": "nnwatch-scrape", "key": "username"},
                                  "password": {"name": "nnwatch-scrape", "key": "password"}}  # from a Secret
        assert e["relabelings"][0]["sourceLabels"] == ["__meta_kubernetes_pod_label_training_kubeflow_org_job_name"]
        assert e["relabelings"][-1] == {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
        assert len(e["relabelings"]) == 2  # runFromKubernetesJob: false
        assert e["metricRelabelings"][0]["action"] == "drop"


# --- PrometheusRule ----------------------------------------------------------------------------------


def test_rules_equal_the_shipped_rule_file(default: tuple[list[dict[str, Any]], str]) -> None:
    rule = one(default[0], "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    shipped = yaml.safe_load((ROOT / "alerts" / "nnwatch.rules.yml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"]


def test_rules_follow_values_as_agent_rules_would() -> None:
    values = scenario("custom-rules-values.yaml")["rules"]
    thresholds = {f"{check}.{param}": v for check, params in values["thresholds"].items() for param, v in params.items()}
    config = agent_rules.RulesConfig(
        selector=values["selector"], target_selector=values["targetSelector"],
        expected_jobs=tuple(values["expectedJobs"]), run_labels=values["runLabels"], thresholds=thresholds,
        for_durations=values["durations"], runbook_base_url=values["runbookBaseUrl"],
        extra_labels=values["additionalRuleLabels"], interval=values["interval"],
    )
    rule = one(render(scenario("custom-rules-values.yaml"))[0], "PrometheusRule")
    assert rule["metadata"]["name"] == "ml-watch" and rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"]["groups"] == agent_rules.render_groups(config)
    text = json.dumps(rule["spec"])
    assert 'absent(up{job=\\"nnwatch/eval-sweep\\"})' in text and "nnwatch_activation_dead_ratio{namespace=" in text


@pytest.mark.parametrize("name", ["default-values.yaml", "custom-rules-values.yaml"])
def test_rendered_rules_pass_promtool(name: str, tmp_path: Path) -> None:
    rule = one(render(scenario(name))[0], "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([require_binary("promtool"), "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- dashboards --------------------------------------------------------------------------------------


def test_dashboard_configmaps_equal_the_shipped_json(default: tuple[list[dict[str, Any]], str]) -> None:
    maps = of_kind(default[0], "ConfigMap")
    assert len(maps) == len(dash.FILES)
    seen = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "nnwatch"
        ((key, text),) = cm["data"].items()
        seen[key] = json.loads(text)
    assert seen == {name: json.loads((ROOT / "dashboards" / name).read_text()) for name in dash.FILES.values()}
    assert len(json.dumps(seen)) < 900_000  # ConfigMaps hold at most 1 MiB


def test_dashboard_folder_follows_values() -> None:
    for cm in of_kind(render(scenario("custom-rules-values.yaml"))[0], "ConfigMap"):
        assert cm["metadata"]["annotations"]["grafana_folder"] == "ML training"
        assert cm["metadata"]["labels"]["team"] == "ml-platform"


# --- AlertmanagerConfig ------------------------------------------------------------------------------


def test_alertmanagerconfig_routes_by_severity_with_secret_references() -> None:
    objects, notes = render(scenario("alertmanager-values.yaml"), namespace="ml")
    amc = one(objects, "AlertmanagerConfig")
    spec = amc["spec"]
    assert spec["route"]["matchers"] == [{"name": "alertname", "matchType": "=~", "value": "NNWatch.*"}]
    routes = {r["matchers"][0]["value"]: r["receiver"] for r in spec["route"]["routes"]}
    assert routes == {"critical": "nnwatch-pagerduty", "warning": "nnwatch-slack"}
    receivers = {r["name"]: r for r in spec["receivers"]}
    pd = receivers["nnwatch-pagerduty"]["pagerdutyConfigs"][0]
    assert pd["routingKey"] == {"name": "team-ml-pagerduty", "key": "integration-key"}
    slack = receivers["nnwatch-slack"]["slackConfigs"][0]
    assert slack["apiURL"] == {"name": "team-ml-slack", "key": "url"}
    assert slack["channel"] == "#ml-training-alerts"
    assert "{{ .Annotations.runbook_url }}" in slack["text"] and "{{ .CommonLabels.alertname }}" in slack["title"]
    inhibit = spec["inhibitRules"][0]
    assert inhibit["sourceMatch"][0]["value"] == "critical" and inhibit["targetMatch"][0]["value"] == "warning"
    assert inhibit["equal"] == ["alertname", "job"]
    assert "team-ml-slack" in notes and "never stores credentials" in notes


def test_alertmanagerconfig_with_one_receiver() -> None:
    values = {"alertmanagerConfig": {"enabled": True, "pagerduty": {"enabled": False}}}
    spec = one(render(values)[0], "AlertmanagerConfig")["spec"]
    assert [r["receiver"] for r in spec["route"]["routes"]] == ["nnwatch-slack"]
    assert {r["name"] for r in spec["receivers"]} == {"nnwatch-null", "nnwatch-slack"}


# --- should not render when disabled ------------------------------------------------------------------


@pytest.mark.parametrize("section,kind", [("podMonitor", "PodMonitor"), ("rules", "PrometheusRule"),
                                          ("dashboards", "ConfigMap")])
def test_should_not_render_when_disabled(section: str, kind: str) -> None:
    objects, _ = render({section: {"enabled": False}})
    assert of_kind(objects, kind) == []
    assert objects, "the other parts still render"


def test_alertmanagerconfig_should_not_render_by_default(default: tuple[list[dict[str, Any]], str]) -> None:
    assert of_kind(default[0], "AlertmanagerConfig") == []
    both_off = {"alertmanagerConfig": {"enabled": True, "pagerduty": {"enabled": False}, "slack": {"enabled": False}}}
    assert of_kind(render(both_off)[0], "AlertmanagerConfig") == []


def test_everything_disabled_renders_nothing_but_notes() -> None:
    objects, notes = render(scenario("disabled-values.yaml"))
    assert objects == []
    assert "PodMonitor is disabled" in notes


# --- NOTES and the example Job --------------------------------------------------------------------------


def test_notes_tell_how_to_instrument_a_pod(default: tuple[list[dict[str, Any]], str]) -> None:
    notes = default[1]
    assert 'nnwatch.io/scrape: "true"' in notes and "agent.attach(model, optimizer)" in notes
    assert "- name: nnwatch" in notes and f"containerPort: {DEFAULT_PORT}" in notes
    env = set(re.findall(r"\bNNWATCH_[A-Z_]+\b", notes))
    fields = {f"NNWATCH_{name.upper()}" for name in Options.__dataclass_fields__}
    assert {"NNWATCH_PORT", "NNWATCH_ADDR", "NNWATCH_SAMPLE_EVERY"} <= env
    assert env <= fields, f"NOTES names unknown variables: {env - fields}"


def example_objects() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]


def test_example_job_is_valid_and_selected_by_the_podmonitor(default: tuple[list[dict[str, Any]], str]) -> None:
    objects = example_objects()
    for o in objects:
        kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
    job = one(objects, "Job")
    pod = job["spec"]["template"]
    pm = one(default[0], "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= set(ports)
    assert ports["nnwatch"] == int(env["NNWATCH_PORT"]) == DEFAULT_PORT
    assert env["NNWATCH_ADDR"] == "0.0.0.0"
    for name in env:
        if name.startswith("NNWATCH_"):
            assert name.removeprefix("NNWATCH_").lower() in Options.__dataclass_fields__, name
    webhook = next(e for e in container["env"] if e["name"] == "NNWATCH_WEBHOOK_URL")
    assert "secretKeyRef" in webhook["valueFrom"]  # never a literal URL
    sc, csc = pod["spec"]["securityContext"], container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["command"][-1].startswith(mounts["script"])


def test_example_training_script_runs(tmp_path: Path) -> None:
    """The script in the example's ConfigMap trains, serves /metrics and exits cleanly."""
    script = one(example_objects(), "ConfigMap")["data"]["train.py"]
    (tmp_path / "train.py").write_text(script)
    env = {**os.environ, "NNWATCH_PORT": "0", "NNWATCH_ADDR": "127.0.0.1", "NNWATCH_SAMPLE_EVERY": "5",
           "NNWATCH_NUM_CLASSES": "10", "TRAIN_STEPS": "40", "HOME": str(tmp_path)}
    env.pop("NNWATCH_WEBHOOK_URL", None)
    result = subprocess.run([sys.executable, str(tmp_path / "train.py")], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"nnwatch metrics at http://127\.0\.0\.1:\d+/metrics", result.stdout)
    assert "done after 40 steps" in result.stdout

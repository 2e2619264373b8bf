"""The command line's conventions (``--version``, help on a bare call) and ``import nnwatch``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agent
from agent.cli import main

ROOT = Path(agent.__file__).resolve().parents[1]


def test_version_and_help_on_a_bare_call(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"nnwatch {agent.__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: nnwatch") and "demo" in out and "generate" in out


def test_import_nnwatch_is_the_same_api() -> None:
    import nnwatch

    assert nnwatch.attach is agent.attach and nnwatch.preflight is agent.preflight
    assert set(nnwatch.__all__) == set(agent.__all__)


def test_a_shadowing_agent_module_gets_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("policy = None  # an RL script's own agent\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", "import nnwatch"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert run.returncode != 0
    assert "is not nnwatch's package" in run.stderr and str(tmp_path / "agent.py") in run.stderr

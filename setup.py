"""Build hook: the wheel carries the files its commands read (alert rules, Alertmanager config and templates,
dashboards, runbooks) under agent/_shipped/, copied from where they are committed (see agent/assets.py)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _shipped() -> tuple[str, ...]:
    namespace: dict = {}
    text = (ROOT / "agent" / "assets.py").read_text(encoding="utf-8")
    start = text.index("SHIPPED = ")
    exec(text[start:text.index('"""', start)], namespace)  # the list lives in one place: agent.assets.SHIPPED
    return namespace["SHIPPED"]


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        for rel in _shipped():
            target = Path(self.build_lib) / "agent" / "_shipped" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, target)


setup(cmdclass={"build_py": BuildWithShippedFiles})

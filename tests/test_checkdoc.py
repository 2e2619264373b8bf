"""docs/checks.md is generated from the catalogue: fail when the committed copy is stale."""

from pathlib import Path

from agent.ops import checkdoc
from agent.checks.catalogue import CHECKS

ROOT = Path(__file__).resolve().parent.parent


def test_checks_doc_is_up_to_date():
    committed = (ROOT / "docs" / "checks.md").read_text()
    assert committed == checkdoc.render(), "docs/checks.md is stale: run `make generate`"


def test_every_check_and_threshold_is_documented():
    text = checkdoc.render()
    for c in CHECKS:
        assert f"## {c.name}\n" in text
        for t in c.thresholds:
            assert f"`{c.name}.{t}`" in text

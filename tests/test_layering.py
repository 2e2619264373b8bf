"""The package layout tells the data flow: no import circles, no upward imports, small modules, light runtime."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "agent"

LAYERS: list[tuple[str, tuple[str, ...]]] = [  # lowest first: a module imports its own layer and lower ones only
    ("data", ("agent._version", "agent.assets", "agent.redact", "agent.snapshot", "agent.checks.catalogue", "agent.checks.thresholds")),  # plain records, the catalogue
    ("base", ("agent.config", "agent.guard", "agent.console", "agent.post", "agent.webconfig")),  # options, the error guard, default log output
    ("collect", ("agent.collect",)),  # hooks' device statistics, the one transfer, step bookkeeping
    ("consume", ("agent.checks", "agent.export")),  # read snapshots: findings; Prometheus
    ("monitor", ("agent.monitor", "agent.hooks", "agent.state", "agent.notices")),  # owns the hooks and the step loop
    ("preflight", ("agent.preflight",)),  # the recipe's checks on a copy of the model, before training
    ("api", ("agent",)),  # attach() and the public names
    ("ops", ("agent.ops",)),  # generators from the catalogue, apart from the runtime
    ("entry", ("agent.cli", "agent.demo", "agent.integrations")),
]
INDEPENDENT = (("agent.checks", "agent.export"),)
"""Siblings that never import each other (both read the snapshot; the monitor wires them)."""
MAX_MODULE_LINES = 460
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every agent module ``name`` imports anywhere in its file (module level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer_of(name: str) -> int:
    best, layer = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), index
    if layer < 0:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS")
    return layer


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            if layer_of(dst) > layer_of(src):
                bad.append(f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})")
            for a, b in INDEPENDENT:
                for x, y in ((a, b), (b, a)):
                    if _under(src, x) and _under(dst, y) and not _under(dst, x):
                        bad.append(f"{src} imports {dst}: {x} and {y} are independent")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_the_checker_would_fail_on_a_cycle_and_an_upward_import():
    graph = import_graph()
    graph["agent.collect.stats"] = graph["agent.collect.stats"] | {"agent.monitor"}  # upward, and a circle
    assert any("agent.collect.stats (collect) imports agent.monitor (monitor)" in b for b in upward_imports(graph))
    assert any({"agent.collect.stats", "agent.monitor"} <= set(c) for c in cycles(graph))
    sibling = {"agent.checks.engine": {"agent.export.collector"}, "agent.export.collector": set()}
    assert upward_imports(sibling) == ["agent.checks.engine imports agent.export.collector: agent.checks and agent.export are independent"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer_a_docstring_and_a_modest_size():
    for name, path in modules().items():
        layer_of(name)
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{name}: add a one-line docstring that says its job"
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it by job"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= MAX_CLASS_LINES, f"{name}.{node.name} has {size} lines: split it by job"


@pytest.mark.parametrize("forbidden", ["agent.ops", "agent.cli", "agent.demo", "agent.integrations", "yaml"])
def test_importing_agent_stays_light(forbidden):
    code = (f"import sys, agent; m = agent.attach(__import__('torch').nn.Linear(2, 2), port=None); m.close(); "
            f"loaded = [n for n in sys.modules if n == {forbidden!r} or n.startswith({forbidden!r} + '.')]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

"""Dashboards: drift, lint rules (CONVENTIONS.md), PromQL parsing with promtool, provisioning files, and
`nnwatch dashboards push` against a local stand-in for Grafana's HTTP API."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from agent.ops import dashboards as dash
from agent.cli import main
from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parent.parent
BOARDS = {uid: ROOT / "dashboards" / name for uid, name in dash.FILES.items()}
DS = {"type": "prometheus", "uid": "${datasource}"}
RANGE_FUNCS = re.compile(r"\b(rate|irate|increase)\s*\(")


def load(uid: str) -> dict[str, Any]:
    return json.loads(BOARDS[uid].read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, rows' nested panels included."""
    out = []
    for p in board["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and annotation."""
    out = [(f"{board['uid']} panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
           for p in panels(board) for t in p["targets"]]
    out += [(f"{board['uid']} annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"]]
    return out


def export_metric_names() -> set[str]:
    """Every metric family name defined in agent/export/collector.py (counters without their _total suffix)."""
    text = (ROOT / "agent" / "export" / "collector.py").read_text()
    return set(re.findall(r'"(nnwatch_[a-z_]+)"', text))


def module_metric_names() -> set[str]:
    """Families of agent/export/collector.py that carry a ``module`` label."""
    text = (ROOT / "agent" / "export" / "collector.py").read_text()
    return {m.group(1) for m in re.finditer(r'_family\(\s*"\w+",\s*"(nnwatch_\w+)",\s*"[^"]*",\s*\[([^\]]*)\]', text)
            if '"module"' in m.group(2)}


# --- drift ---------------------------------------------------------------------------------------


def test_committed_dashboards_match_the_generator(tmp_path: Path) -> None:
    written = dash.generate(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(
        f"dashboards/{name}" for name in dash.FILES.values())
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        assert committed.is_file(), f"{rel} is not committed; run `nnwatch generate`"
        assert committed.read_text() == path.read_text(), f"{rel} is stale; run `nnwatch generate`"


def test_dashboards_generate_command_writes_the_dashboards_and_the_chart(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "generate", "--root", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines())
    expected = {f"{d}/{name}" for d in ("dashboards", "helm/nnwatch/dashboards") for name in dash.FILES.values()}
    expected |= {"helm/nnwatch/templates/prometheusrule.yaml", "helm/nnwatch/values.yaml",
                 "helm/nnwatch/values.schema.json"}
    assert set(written) == expected
    for rel in written:
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), f"{rel} differs from the committed file"


def test_only_generated_dashboards_are_shipped() -> None:
    assert sorted(p.name for p in (ROOT / "dashboards").glob("*.json")) == sorted(dash.FILES.values())
    assert sorted(p.name for p in (ROOT / "helm/nnwatch/dashboards").glob("*.json")) == sorted(dash.FILES.values())


# --- lint (CONVENTIONS.md dashboard rules) --------------------------------------------------------


@pytest.fixture(params=sorted(BOARDS), ids=lambda uid: uid)
def board(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_identity_is_stable(board: dict[str, Any]) -> None:
    assert board["uid"] in dash.FILES and BOARDS[board["uid"]].name == dash.FILES[board["uid"]]
    assert board["id"] is None
    assert board["title"].startswith("nnwatch / ")
    assert "nnwatch" in board["tags"]
    assert board["schemaVersion"] >= 39


def test_variables(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    expected = {"job", "instance", "rank"} | ({"module"} if board["uid"] == dash.TRAINING_UID else set())
    assert expected <= set(variables)
    for name in expected:
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == DS, name
        assert v["query"].startswith("label_values(") and v["query"].endswith(f", {name})"), name
        # "All" must be a regex that also matches an absent label (rank exists only in distributed jobs).
        assert v["includeAll"] and v["allValue"] == ".*" and v["multi"], name
        assert re.fullmatch(v["allValue"], ""), name
        assert v.get("description"), name


def test_every_panel_has_datasource_unit_description_and_targets(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]] + [q["id"] for p in board["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(board):
        where = f"{board['uid']} panel {p['id']} {p['title']!r}"
        assert p["datasource"] == DS, where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert len(p.get("description", "")) >= 20, f"{where}: no description"
        assert p["targets"], f"{where}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), where
        for t in p["targets"]:
            assert t["datasource"] == DS, where


def test_panels_fit_the_grid_without_overlap(board: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_rate_functions_use_rate_interval(board: dict[str, Any]) -> None:
    for where, expr in queries(board):
        for m in RANGE_FUNCS.finditer(expr):
            window = re.match(r"[^\[]*\[([^\]]+)\]", expr[m.end():])
            assert window and window.group(1) == "$__rate_interval", f"{where}: {m.group(1)}() without [$__rate_interval]"


def test_every_metric_selector_filters_by_the_variables(board: dict[str, Any]) -> None:
    known = export_metric_names()
    per_module = module_metric_names()
    assert "nnwatch_gradient_norm" in per_module and "nnwatch_activation_dead_ratio" in per_module
    for where, expr in queries(board):
        if "ALERTS{" in expr:  # alert labels are whatever the rule keeps: at least the job
            assert 'job=~"$job"' in expr, where
            continue
        names = re.findall(r"\b(nnwatch_[a-z_]+)\b(\{[^}]*\})?", expr)
        assert names, f"{where}: no nnwatch metric"
        for name, selector in names:
            base = name[: -len("_total")] if name.endswith("_total") else name
            assert base in known, f"{where}: {name} is not exported by agent/export/collector.py"
            assert selector, f"{where}: {name} has no label matchers"
            for label in ("job", "instance", "rank"):
                assert f'{label}=~"${label}"' in selector, f"{where}: {name} ignores ${label}"
            if board["uid"] == dash.TRAINING_UID and name in per_module and name != "nnwatch_finding_active":
                assert 'module=~"$module"' in selector, f"{where}: {name} ignores $module"


def test_alert_annotations(board: dict[str, Any]) -> None:
    anns = board["annotations"]["list"]
    alert = [a for a in anns if "ALERTS{" in a.get("expr", "")]
    assert len(alert) == 1
    a = alert[0]
    assert a["datasource"] == DS and a["enable"] is True
    assert 'alertname=~"NNWatch.*"' in a["expr"] and 'alertstate="firing"' in a["expr"]
    assert a["titleFormat"] == "{{alertname}}"
    assert any(p["type"] == "timeseries" for p in panels(board))  # annotations show on time series


def test_training_dashboard_covers_every_signal() -> None:
    exprs = " ".join(expr for _, expr in queries(load(dash.TRAINING_UID)))
    for metric in ("nnwatch_loss", "nnwatch_validation_loss", "nnwatch_learning_rate", "nnwatch_global_gradient_norm",
                   "nnwatch_gradient_norm", "nnwatch_weight_norm", "nnwatch_update_ratio",
                   "nnwatch_activation_dead_ratio", "nnwatch_activation_saturated_ratio",
                   "nnwatch_global_nonfinite_elements", "nnwatch_cuda_memory_allocated_bytes",
                   "nnwatch_host_resident_memory_bytes", "nnwatch_step_duration_seconds",
                   "nnwatch_agent_overhead_ratio", "nnwatch_agent_errors_total", "nnwatch_finding_active"):
        assert re.search(rf"\b{metric}\b", exprs), metric
    assert "deriv(nnwatch_host_resident_memory_bytes" in exprs and "deriv(nnwatch_cuda_memory_allocated_bytes" in exprs
    kinds = {p["type"] for p in panels(load(dash.TRAINING_UID))}
    assert {"heatmap", "bargauge", "table", "timeseries", "stat"} <= kinds
    heat = [p for p in panels(load(dash.TRAINING_UID)) if p["type"] == "heatmap"]
    assert {re.match(r"nnwatch_\w+", p["targets"][0]["expr"]).group(0) for p in heat} == {
        "nnwatch_activation_dead_ratio", "nnwatch_activation_saturated_ratio"}
    assert all(p["options"]["calculate"] is False for p in heat)  # one row per layer, not a histogram


def test_overview_covers_the_fleet() -> None:
    exprs = " ".join(expr for _, expr in queries(load(dash.OVERVIEW_UID)))
    for metric in ("nnwatch_finding_active", "nnwatch_loss", "nnwatch_steps_total", "nnwatch_samples_total",
                   "nnwatch_host_resident_memory_bytes", "nnwatch_last_step_timestamp_seconds"):
        assert metric in exprs, metric


# --- every query parses (promtool) ----------------------------------------------------------------


def substitute(expr: str, rate_interval: str = "1m") -> str:
    """Grafana's variable interpolation for a single-valued "All" selection."""
    expr = expr.replace("$__rate_interval", rate_interval)
    return re.sub(r"\$(job|instance|rank|module)\b", ".*", expr)


def variable_selectors(board: dict[str, Any]) -> list[tuple[str, str]]:
    """The series selector inside each label_values(selector, label) variable query."""
    out = []
    for v in board["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", v.get("query", "") if v["type"] == "query" else "")
        if m:
            out.append((f"{board['uid']} variable {v['name']}", m.group(1)))
    return out


def promtool_check(tmp_path: Path, exprs: list[tuple[str, str]]) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"nnwatch:dashboard_query_{k}", "expr": substitute(expr)} for k, (_, expr) in enumerate(exprs)]
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, width=10_000))
    return subprocess.run([require_binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    exprs = [q for uid in BOARDS for q in queries(load(uid)) + variable_selectors(load(uid))]
    assert len(exprs) > 50
    result = promtool_check(tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    # Guards the test above: the wrapping must really make promtool parse PromQL.
    result = promtool_check(tmp_path, [("broken", 'rate(nnwatch_steps_total{job=~"$job"}[$__rate_interval]')])
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr)


# --- provisioning ---------------------------------------------------------------------------------


def test_provisioning_files() -> None:
    base = ROOT / "dashboards" / "provisioning"
    ds = yaml.safe_load((base / "datasources" / "nnwatch.yaml").read_text())
    assert ds["apiVersion"] == 1
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus" and prom["isDefault"] is True and prom["url"].startswith("http://")
    prov = yaml.safe_load((base / "dashboards" / "nnwatch.yaml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert provider["folderUid"] == dash.FOLDER_UID
    # Loaded as they are: no provider-side templating is needed, the JSON is complete.
    for path in BOARDS.values():
        assert "${DS_" not in path.read_text()  # no import-style __inputs placeholders


# --- push ------------------------------------------------------------------------------------------


class FakeGrafana:
    """The subset of Grafana's HTTP API that grafana-client uses for a push; records every request."""

    def __init__(self, token: str = "good-token", forbidden: bool = False) -> None:
        self.token = token
        self.forbidden = forbidden
        self.requests: list[dict[str, Any]] = []
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query),
                                      "auth": self.headers.get("Authorization"), "body": body})
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._reply(401, {"message": "invalid API key"})
                code, reply = fake.route(method, url.path, parse_qs(url.query), body)
                self._reply(code, reply)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        return Handler

    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/api/frontend/settings":
            return 200, {"buildInfo": {"version": "11.6.0"}}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            return (200, self.folders[uid]) if uid in self.folders else (404, {"message": "folder not found"})
        if method == "POST" and path == "/api/folders":
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"]}
            return 200, self.folders[body["uid"]]
        if method == "POST" and path == "/api/dashboards/db":
            if self.forbidden:
                return 403, {"message": "Access denied"}
            board = body["dashboard"]
            if body.get("folderUid") not in self.folders:
                return 400, {"message": "folder not found"}
            old = self.dashboards.get(board["uid"])
            if old is not None and not body.get("overwrite"):
                return 412, {"status": "name-exists", "message": "A dashboard with the same uid already exists"}
            version = (old["version"] + 1) if old else 1
            self.dashboards[board["uid"]] = {"dashboard": board, "folderUid": body["folderUid"], "version": version}
            return 200, {"id": 1, "uid": board["uid"], "url": f"/d/{board['uid']}/x", "status": "success",
                         "version": version}
        if method == "GET" and path == "/api/search":
            uids = query.get("dashboardUIDs", [])
            return 200, [{"uid": u, "type": "dash-db", "title": d["dashboard"]["title"]}
                         for u, d in self.dashboards.items() if not uids or u in uids]
        return 404, {"message": f"not found: {method} {path}"}

    def __enter__(self) -> "FakeGrafana":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    with FakeGrafana() as g:
        yield g


def test_push_creates_folder_and_dashboards_then_overwrites_idempotently(
        grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NNWATCH_GRAFANA_URL", grafana.url)
    monkeypatch.setenv("NNWATCH_GRAFANA_TOKEN", "good-token")
    assert main(["dashboards", "push"]) == 0
    out = capsys.readouterr().out
    assert f"{grafana.url}/d/{dash.OVERVIEW_UID}/x" in out and f"{grafana.url}/d/{dash.TRAINING_UID}/x" in out
    assert all(r["auth"] == "Bearer good-token" for r in grafana.requests)
    assert [r["path"] for r in grafana.requests if r["method"] == "POST" and r["path"] == "/api/folders"] == [
        "/api/folders"]
    posts = [r["body"] for r in grafana.requests if r["path"] == "/api/dashboards/db"]
    assert sorted(b["dashboard"]["uid"] for b in posts) == sorted(dash.FILES)
    for body in posts:
        assert body["overwrite"] is True and body["folderUid"] == dash.FOLDER_UID
        assert body["dashboard"]["id"] is None
        assert body["dashboard"] == load(body["dashboard"]["uid"])  # the committed JSON, unchanged
    assert grafana.folders == {dash.FOLDER_UID: {"uid": dash.FOLDER_UID, "title": dash.FOLDER_TITLE}}

    grafana.requests.clear()
    assert main(["dashboards", "push"]) == 0  # again: the folder exists, dashboards are overwritten by uid
    assert not [r for r in grafana.requests if r["path"] == "/api/folders"]
    assert sorted(grafana.dashboards) == sorted(dash.FILES)
    assert {d["version"] for d in grafana.dashboards.values()} == {2}
    search = [r for r in grafana.requests if r["path"] == "/api/search"]
    assert search and sorted(search[0]["query"]["dashboardUIDs"]) == sorted(dash.FILES)


def test_push_options_win_over_environment(grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNWATCH_GRAFANA_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("NNWATCH_GRAFANA_TOKEN", "wrong")
    assert main(["dashboards", "push", "--url", grafana.url, "--token", "good-token", "--folder-uid", "ml",
                 "--folder", "ML training"]) == 0
    assert grafana.folders == {"ml": {"uid": "ml", "title": "ML training"}}
    assert {d["folderUid"] for d in grafana.dashboards.values()} == {"ml"}


def test_push_with_a_bad_token_says_so_and_changes_nothing(
        grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NNWATCH_GRAFANA_TOKEN", raising=False)
    assert main(["dashboards", "push", "--url", grafana.url, "--token", "expired"]) == 1
    err = capsys.readouterr().err
    assert "rejected the token (HTTP 401)" in err and "NNWATCH_GRAFANA_TOKEN" in err
    assert [r["method"] for r in grafana.requests] == ["GET"]  # stopped at the first request
    assert grafana.requests[0]["auth"] == "Bearer expired"
    assert not grafana.dashboards


def test_push_with_a_read_only_token_names_the_permission(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeGrafana(forbidden=True) as g:
        assert main(["dashboards", "push", "--url", g.url, "--token", "good-token"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "Editor" in err and "uploading dashboard" in err


def test_push_to_an_unreachable_grafana(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    assert main(["dashboards", "push", "--url", f"http://127.0.0.1:{port}", "--token", "t", "--timeout", "3"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Grafana at http://127.0.0.1:{port}" in err and "NNWATCH_GRAFANA_URL" in err
    assert "Connection refused" in err


def test_push_without_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NNWATCH_GRAFANA_URL", raising=False)
    assert main(["dashboards", "push"]) == 2
    assert "NNWATCH_GRAFANA_URL" in capsys.readouterr().err

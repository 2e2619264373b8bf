"""The exporter: live /metrics passes promtool, port handling, TLS, LOCAL_RANK, the series cap."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.request

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from torch import nn

import agent
from agent.export.collector import NNWatchCollector, distributed_labels, spread_select
from tests.helpers import SmallMLP, require_binary, train


def scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=5, context=context) as resp:
        return resp.read().decode()


def families(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            out.setdefault(name, []).append(line)
    return out


def test_live_metrics_pass_promtool_check_metrics():
    promtool = require_binary("promtool")
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with agent.attach(model, opt, port=0, addr="127.0.0.1", sample_every=2, num_classes=4) as mon:
        train(model, opt, 14, monitor=mon)  # 8 samples x 32 rows: the dead window's 256 positions
        mon.log(val_loss=1.0, accuracy=0.5)
        train(model, opt, 2, monitor=mon)
        text = scrape(mon.url)
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    fams = families(text)
    for name in (
        "nnwatch_build_info", "nnwatch_steps_total", "nnwatch_step", "nnwatch_step_duration_seconds",
        "nnwatch_last_step_timestamp_seconds", "nnwatch_samples_total", "nnwatch_learning_rate", "nnwatch_loss",
        "nnwatch_validation_loss", "nnwatch_gradient_norm", "nnwatch_weight_norm", "nnwatch_update_ratio",
        "nnwatch_global_gradient_norm", "nnwatch_nonfinite_elements", "nnwatch_activation_dead_ratio",
        "nnwatch_activation_saturated_ratio", "nnwatch_host_resident_memory_bytes", "nnwatch_agent_time_seconds_total",
        "nnwatch_uncleared_gradient_norm", "nnwatch_expected_initial_loss", "nnwatch_logged_value",
    ):
        assert name in fams, name
    assert 'nnwatch_gradient_norm{module="fc1"}' in text
    assert 'nnwatch_activation_dead_ratio{activation="relu",module="(root):relu"}' in text
    assert 'nnwatch_logged_value{name="accuracy"} 0.5' in text


def test_series_count_for_a_small_model():
    torch.manual_seed(0)
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    registry = CollectorRegistry(auto_describe=False)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    registry.register(NNWatchCollector(mon, extra_labels={}))
    train(model, opt, 2, monitor=mon)
    fams = families(generate_latest(registry).decode())
    assert len(fams["nnwatch_gradient_norm"]) == 3
    assert registry.get_sample_value("nnwatch_steps_total") == 2
    assert registry.get_sample_value("nnwatch_learning_rate", {"param_group": "0"}) == 0.1
    assert registry.get_sample_value("nnwatch_global_nonfinite_elements", {"tensor": "gradient"}) == 0
    mon.close()


def test_port_in_use_logs_and_training_continues(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        model = SmallMLP()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = agent.attach(model, opt, port=port, addr="127.0.0.1")
        assert mon.url is None
        assert any("cannot serve /metrics" in r.getMessage() and str(port) in r.getMessage() for r in caplog.records)
        train(model, opt, 3, monitor=mon)
        assert mon.step_index == 3
        mon.close()


def test_local_rank_offsets_the_port(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "3")
    model = SmallMLP()
    mon = agent.attach(model, port=base - 1, addr="127.0.0.1")
    try:
        assert mon.url == f"http://127.0.0.1:{base}/metrics"
        text = scrape(mon.url)
        assert 'nnwatch_steps_total{local_rank="1",rank="3"}' in text
    finally:
        mon.close()
    assert distributed_labels({"WORLD_SIZE": "1"}) == {}


def test_tls(tmp_path):
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    model = SmallMLP()
    mon = agent.attach(model, port=0, addr="127.0.0.1", tls_cert=str(cert), tls_key=str(key))
    try:
        assert mon.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        assert "nnwatch_build_info" in scrape(mon.url, ctx)
        with pytest.raises(Exception):
            scrape(mon.url.replace("https", "http"))
    finally:
        mon.close()


def test_series_cap_spreads_over_depth_and_keeps_firing_modules():
    names = [f"l{i}" for i in range(10)]
    assert spread_select(names, 20, set()) == names
    picked = spread_select(names, 4, set())
    assert picked[0] == "l0" and picked[-1] == "l9" and len(picked) == 4
    picked = spread_select(names, 3, {"l5"})
    assert "l5" in picked and len(picked) == 3


def test_max_modules_caps_per_module_series_but_not_totals():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1, max_modules=5)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NNWatchCollector(mon, extra_labels={}))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    fams = families(generate_latest(registry).decode())
    assert len(fams["nnwatch_gradient_norm"]) == 5
    assert registry.get_sample_value("nnwatch_series_capped_modules", {"kind": "layer"}) == 7
    total = mon.snapshot.grad_norm
    assert registry.get_sample_value("nnwatch_global_gradient_norm") == pytest.approx(total)
    assert total == pytest.approx(sum(l.grad_norm ** 2 for l in mon.snapshot.layers) ** 0.5)
    mon.close()


def test_collector_never_raises(monkeypatch):
    model = SmallMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    train(model, opt, 1, monitor=mon)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NNWatchCollector(mon, extra_labels={}))
    monkeypatch.setattr(type(mon), "findings", property(lambda self: 1 / 0))
    generate_latest(registry)  # must not raise
    assert mon.guard.errors["export"] == 1
    mon.close()

"""attach() validates loudly (what to pass instead), and secrets in URLs work but never show (agent.config,
agent.redact, agent.export.pushgateway)."""

from __future__ import annotations

import base64
import http.server
import logging
import threading

import pytest
import torch
from torch import nn

import agent
from agent.config import Options
from agent.redact import redact_url, split_credentials


_MODELS: list[nn.Module] = []  # the monitor holds its model weakly: keep them alive for the test


def _attach(**options):
    _MODELS.append(nn.Linear(3, 3))
    return agent.attach(_MODELS[-1], port=None, native=False, **options)


# -- booleans ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [("false", False), ("False", False), ("0", False), ("off", False),
                                        ("true", True), ("yes", True), (1, True), (0, False)])
def test_booleans_given_as_strings_are_parsed(text, want):
    with _attach(checks=text) as mon:
        assert mon.options.checks is want
        assert (mon.engine is not None) is want


@pytest.mark.parametrize("bad", ["maybe", "", 2, None, [True]])
def test_other_booleans_are_rejected_with_what_to_pass(bad):
    with pytest.raises(ValueError, match=r"checks must be True or False \(or one of the strings 1/true/yes/on for True, 0/false/no/off"):
        _attach(checks=bad)


def test_a_bad_boolean_in_the_environment_names_the_variable():
    with pytest.raises(ValueError, match=r"NNWATCH_ACTIVATIONS must be True or False"):
        Options.resolve(env={"NNWATCH_ACTIVATIONS": "sometimes"})


# -- thresholds -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("thresholds, match", [
    ({"dead_units.ratio": 5}, r"dead_units.ratio' is a fraction in 0..1"),
    ({"memory_leak.rising_fraction": 1.5}, r"fraction in 0..1"),
    ({"dead_units.ratio": -0.1}, r"must be >= 0"),
    ({"loss_spike.history": 2.5}, r"whole number >= 1"),
    ({"overfitting.rises": 0}, r"whole number >= 1"),
    ({"dead_units.ratio": float("nan")}, r"finite number"),
    ({"dead_units.rate": 0.3}, r"unknown threshold 'dead_units.rate'; valid names: .*dead_units.ratio"),
])
def test_thresholds_out_of_range_are_rejected(thresholds, match):
    with pytest.raises(ValueError, match=match):
        _attach(thresholds=thresholds)


def test_thresholds_in_range_are_taken_in_either_form():
    with _attach(thresholds={"dead_units.ratio": 0.3, "memory_leak.min_growth_bytes": 0}) as mon:
        assert mon.options.thresholds["dead_units.ratio"] == 0.3
    with _attach(thresholds="dead_units.ratio=0.3, memory_leak.samples=20") as mon:  # the README's string form
        assert mon.options.thresholds == {"dead_units.ratio": 0.3, "memory_leak.samples": 20.0}
    assert Options.resolve(env={"NNWATCH_THRESHOLDS": "dead_units.ratio=0.25"}).thresholds == {"dead_units.ratio": 0.25}


@pytest.mark.parametrize("raw, match", [
    ("dead_units.ratio", r"^NNWATCH_THRESHOLDS: 'dead_units.ratio' is not name=value; write e.g. 'dead_units.ratio=0.3"),
    ("dead_units.ratio=lots", r"^NNWATCH_THRESHOLDS: the value of dead_units.ratio must be a number, got 'lots'"),
    ("dead_units.ratio=3", r"fraction in 0..1"),
])
def test_a_bad_thresholds_variable_says_what_is_wrong(raw, match):
    with pytest.raises(ValueError, match=match):
        Options.resolve(env={"NNWATCH_THRESHOLDS": raw})


# -- server options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("addr", ["not an address", "300.1.1.1", "no-such-host.invalid"])
def test_an_invalid_bind_address_fails_at_attach(addr):
    with pytest.raises(ValueError, match=r"neither an IP address nor a host name that resolves; pass e.g. '0.0.0.0'"):
        agent.attach(nn.Linear(2, 2), port=0, addr=addr, native=False)


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "localhost", "0.0.0.0"])
def test_valid_bind_addresses_are_accepted(addr):
    Options.resolve(env={}, addr=addr, port=None)


def test_unreadable_or_wrong_tls_files_fail_at_attach(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("garbage")
    with pytest.raises(ValueError, match=r"cannot load the TLS certificate .*pass readable PEM files"):
        agent.attach(nn.Linear(2, 2), port=0, tls_cert=str(cert), tls_key=str(key), native=False)


# -- one monitor per model --------------------------------------------------------------------------------
def test_a_second_attach_to_the_same_model_names_the_first_monitor():
    model = nn.Linear(3, 3)
    with agent.attach(model, port=None, native=False, name="first-run") as first:
        with pytest.raises(ValueError, match=r"already watched by <nnwatch.Monitor .*name 'first-run'.*close\(\)"):
            agent.attach(model, port=None, native=False)
        assert len(model._forward_hooks) == 1  # not hooked twice
    with agent.attach(model, port=None, native=False):  # after close(), attaching again is fine
        pass
    assert first is not None


# -- log lines --------------------------------------------------------------------------------------------
def test_a_newline_in_a_module_name_never_splits_a_log_line(caplog):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("evil\nname", nn.Linear(4, 8))
    model.add_module("act\r\nlayer", nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit dead: a finding on the module with the newline
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    caplog.set_level(logging.INFO, logger="nnwatch")
    with agent.attach(model, opt, port=None, native=False, sample_every=1, overhead_budget=None) as mon:
        for _ in range(30):  # 16 rows a step: the dead window's 256 observed positions after 16 steps
            opt.zero_grad()
            model(torch.randn(16, 4)).sum().backward()
            opt.step()
        assert any(f.check == "dead_units" for f in mon.findings)
    messages = [r.getMessage() for r in caplog.records if r.name == "nnwatch"]
    assert any("dead_units" in m for m in messages)
    assert all("\n" not in m and "\r" not in m for m in messages), [m for m in messages if "\n" in m or "\r" in m]


# -- secrets ----------------------------------------------------------------------------------------------
def test_urls_are_shown_without_their_secrets():
    assert redact_url("https://bob:s3cr%2Ft@gw:9091/x") == "https://bob:***@gw:9091/x"
    assert redact_url("https://hooks.slack.com/services/T0/B0/tok", path_is_secret=True) == "https://hooks.slack.com/***"
    assert split_credentials("http://bob:s3cr%2Ft@[::1]:9091/p") == ("http://[::1]:9091/p", "bob", "s3cr/t")


def test_the_webhook_url_never_shows_in_reprs():
    token = "T000/B000/XXXXsecretXXXX"
    with _attach(webhook_url=f"http://127.0.0.1:9/services/{token}") as mon:
        for text in (repr(mon.options), str(mon.options), repr(mon)):
            assert "XXXXsecretXXXX" not in text
        assert "webhook_url='http://127.0.0.1:9/***'" in repr(mon.options)


class _Gateway(http.server.BaseHTTPRequestHandler):
    """A Pushgateway stand-in that wants basic auth bob:pa55:word (a real HTTP server on a real socket)."""

    seen: list[tuple[str, str | None]] = []

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization")
        type(self).seen.append((self.path, auth))
        ok = auth == "Basic " + base64.b64encode(b"bob:pa55:word").decode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def gateway():
    _Gateway.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_pushgateway_credentials_in_the_url_are_sent_as_basic_auth(gateway):
    url = f"http://bob:pa55%3Aword@127.0.0.1:{gateway}"
    mon = _attach(pushgateway_url=url, job="auth")
    mon.close()  # the final push
    assert mon.pusher.pushes == 1 and mon.pusher.failures == 0
    assert _Gateway.seen[-1][0].startswith("/metrics/job/auth")
    assert "pa55" not in repr(mon.pusher) and "pa55" not in repr(mon.options)


def test_a_refused_pushgateway_password_is_not_logged(gateway, caplog):
    caplog.set_level(logging.INFO, logger="nnwatch")
    mon = _attach(job="auth", pushgateway_url=f"http://bob:wrongpassword@127.0.0.1:{gateway}")
    mon.close()
    assert mon.pusher.failures == 1
    lines = [r.getMessage() for r in caplog.records if "Pushgateway" in r.getMessage()]
    assert lines and all("wrongpassword" not in line for line in lines)
    assert f"http://bob:***@127.0.0.1:{gateway}" in lines[0]

"""/metrics behind an exporter-toolkit web configuration (agent.webconfig): basic auth with bcrypt hashes over
TLS, 401 without or with wrong credentials, 200 with them; bad files fail at attach()."""

from __future__ import annotations

import base64
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from torch import nn

import agent
from tests.helpers import require_binary, require_module

bcrypt = require_module("bcrypt")
require_module("yaml")


@pytest.fixture
def web_config(tmp_path):
    openssl = require_binary("openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
                    f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


def _get(url: str, cafile: str, user: str | None = None, password: str = "") -> int:
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10, context=ctx) as resp:
            assert b"nnwatch_build_info" in resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        assert exc.headers.get("WWW-Authenticate", "").startswith("Basic")
        return exc.code


def test_basic_auth_with_a_bcrypt_web_config(web_config, monkeypatch):
    model = nn.Linear(2, 2)
    monkeypatch.setenv("NNWATCH_WEB_CONFIG", str(web_config))
    mon = agent.attach(model, port=0, addr="127.0.0.1", native=False)
    try:
        assert mon.url.startswith("https://")
        cafile = str(web_config.parent / "cert.pem")
        assert _get(mon.url, cafile) == 401
        assert _get(mon.url, cafile, "prometheus", "wrong") == 401
        assert _get(mon.url, cafile, "nobody", "s3cret") == 401
        assert _get(mon.url, cafile, "prometheus", "s3cret") == 200
        assert _get(mon.url, cafile, "prometheus", "s3cret") == 200  # remembered: no second bcrypt check
        assert "s3cret" not in repr(mon.options) and "$2b$" not in repr(mon.options)
    finally:
        mon.close()


@pytest.mark.parametrize("text, match", [
    ("basic_auth_users:\n  p: plaintext\n", r"must be a bcrypt hash"),
    ("tls_server_config:\n  cert_file: cert.pem\n", r"needs both cert_file and key_file"),
    ("tls_config:\n  cert_file: x\n", r"unsupported key\(s\) tls_config"),
    ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.pem\n", r"cannot load the TLS files"),
    ("- a list\n", r"must be a mapping"),
])
def test_a_bad_web_config_fails_at_attach(tmp_path, text, match):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        agent.attach(nn.Linear(2, 2), port=0, web_config=str(path), native=False)


def test_web_config_and_the_tls_shortcut_are_exclusive(web_config):
    with pytest.raises(ValueError, match="not both"):
        agent.attach(nn.Linear(2, 2), port=0, web_config=str(web_config), native=False,
                     tls_cert=str(web_config.parent / "cert.pem"), tls_key=str(web_config.parent / "key.pem"))

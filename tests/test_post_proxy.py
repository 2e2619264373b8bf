"""agent.post honours HTTP(S)_PROXY and NO_PROXY as urllib does, against a real local proxy socket."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from agent.post import Request


class RecordingProxy:
    """Accepts connections, records each request head, answers ``answer`` (a CONNECT refusal, or a 200)."""

    def __init__(self, answer: bytes) -> None:
        self.heads: list[str] = []
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://user:pw@127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                self.heads.append(buf.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


def test_an_http_url_goes_to_the_proxy_with_its_absolute_url_and_credentials(monkeypatch):
    proxy = RecordingProxy(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    code = Request().send("POST", "http://receiver.invalid:9091/metrics/job/x", b"{}", deadline=time.monotonic() + 5)
    assert code == 200
    [head] = proxy.heads
    assert head.startswith("POST http://receiver.invalid:9091/metrics/job/x HTTP/1.1")
    assert "Proxy-Authorization: Basic dXNlcjpwdw==" in head  # user:pw
    proxy.close()


def test_an_https_url_asks_the_proxy_for_a_tunnel(monkeypatch):
    proxy = RecordingProxy(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(ConnectionError, match="refused the tunnel: 403"):
        Request().send("POST", "https://hooks.invalid/services/T/B/SECRET", b"{}", deadline=time.monotonic() + 5)
    [head] = proxy.heads
    assert head.startswith("CONNECT hooks.invalid:443 HTTP/1.1") and "SECRET" not in head
    proxy.close()


def test_no_proxy_hosts_are_reached_directly(monkeypatch):
    proxy = RecordingProxy(b"HTTP/1.1 200 OK\r\n\r\n")
    direct = RecordingProxy(b"HTTP/1.1 202 Accepted\r\n\r\n")  # stands in for the receiver
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    port = direct.sock.getsockname()[1]
    assert Request().send("POST", f"http://127.0.0.1:{port}/x", b"", deadline=time.monotonic() + 5) == 202
    assert proxy.heads == [] and direct.heads[0].startswith("POST /x HTTP/1.1")
    proxy.close()
    direct.close()

"""agent.post keeps one total deadline from the name lookup to the status line."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from agent import post
from agent.post import Request


def test_a_hanging_name_lookup_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "receiver.example":
            release.wait(30)  # a resolver that does not answer
        return real(host, *args, **kwargs)

    monkeypatch.setattr(post.socket, "getaddrinfo", hanging)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="resolving receiver.example"):
        Request().send("POST", "http://receiver.example/hook", b"{}", deadline=time.monotonic() + 0.3)
    assert time.monotonic() - t0 < 5  # the deadline, not the resolver, decided (generous for a busy machine)
    release.set()


def _answer_once(status_line: bytes) -> tuple[socket.socket, int]:
    """A local server that answers one request with ``status_line``; returns it and its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(status_line + b"\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    return server, server.getsockname()[1]


def test_a_literal_address_needs_no_lookup_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    server, port = _answer_once(b"HTTP/1.1 204 No Content")
    started = threading.Thread.start
    names: list[str] = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: (names.append(self.name), started(self))[1])
    assert Request().send("POST", f"http://127.0.0.1:{port}/", b"{}", deadline=time.monotonic() + 10) == 204
    assert "nnwatch-resolve" not in names
    server.close()


def test_a_name_resolves_within_the_deadline() -> None:
    server, port = _answer_once(b"HTTP/1.1 200 OK")
    assert Request().send("POST", f"http://localhost:{port}/", b"{}", deadline=time.monotonic() + 10) == 200
    server.close()

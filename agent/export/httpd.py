"""The /metrics HTTP(S) server: one thread, a selector loop, bounded connections, a deadline per request.

prometheus_client's server runs the TLS handshake in its accept thread without a timeout (one idle client
blocks every scrape) and starts a thread per connection. Here every socket is non-blocking: a TLS handshake
or a request that drips in a byte at a time only holds its own connection, and only until its deadline
(``Limits.request_seconds`` from accept, or from the end of the previous response on a kept-alive
connection). At ``Limits.max_connections`` the connection that has waited longest for its request is closed
to make room. Responses are bytes the handler returns (agent.export.render keeps them rendered).
"""

from __future__ import annotations

import errno
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable

MAX_HEAD_BYTES = 16384
"""Largest request head (request line and headers) read; larger requests get 431 and are closed."""


@dataclass(frozen=True)
class Limits:
    """Bounds of the server; each can be lowered for tests."""

    max_connections: int = 32
    """Open connections at most (Prometheus keeps one per target; a few more for people and curl)."""
    request_seconds: float = 10.0
    """Seconds a connection may take for its TLS handshake and a complete request (or stay idle between
    requests) before it is closed."""
    response_seconds: float = 30.0
    """Seconds a client may take to read a response."""


Handler = Callable[[str, str, dict[str, str]], tuple[int, list[tuple[str, str]], bytes]]
"""(method, path, lower-cased headers) -> (status, headers, body)."""

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class _Conn:
    __slots__ = ("sock", "state", "buf", "out", "deadline", "since", "keep_alive")

    def __init__(self, sock: socket.socket, state: str, deadline: float) -> None:
        self.sock = sock
        self.state = state  # "handshake", "read" or "write"
        self.buf = bytearray()
        self.out = b""
        self.deadline = deadline
        self.since = deadline
        self.keep_alive = True


class Server:
    """Serves ``handler`` on ``(addr, port)`` from one daemon thread until ``close()``."""

    def __init__(self, addr: str, port: int, handler: Handler, *, context: ssl.SSLContext | None = None,
                 limits: Limits = Limits()) -> None:
        self._handler = handler
        self._context = context
        self.limits = limits
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self._listen = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and addr in ("::", ""):
                self._listen.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
            self._listen.bind((addr, port))
            self._listen.listen(128)
        except OSError:
            self._listen.close()
            raise
        self._listen.setblocking(False)
        self.port: int = self._listen.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._conns: dict[int, _Conn] = {}
        self._stop = False
        self.requests = 0
        self.thread = threading.Thread(target=self._loop, name="nnwatch-http", daemon=True)
        self.thread.start()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the loop, close every connection and the port; returns within ``timeout`` seconds."""
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.thread.join(timeout)

    # -- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop:
                now = time.monotonic()
                wait = min((c.deadline for c in self._conns.values()), default=now + 1.0) - now
                for key, mask in self._sel.select(max(0.0, min(wait, 1.0))):
                    if key.fileobj is self._listen:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        conn = self._conns.get(key.fd)
                        if conn is not None:
                            self._step(key.fd, conn)
                now = time.monotonic()
                for fd, conn in list(self._conns.items()):
                    if conn.deadline <= now:
                        self._drop(fd)
        finally:
            for fd in list(self._conns):
                self._drop(fd)
            self._sel.close()
            for s in (self._listen, self._wake_r, self._wake_w):
                s.close()

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(64):  # a burst of connections, then back to the others
            try:
                sock, _addr = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the next round may do better
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                return
            if len(self._conns) >= self.limits.max_connections and not self._evict():
                sock.close()
                continue
            sock.setblocking(False)
            state = "read"
            if self._context is not None:
                try:
                    sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ValueError):
                    sock.close()
                    continue
                state = "handshake"
            conn = _Conn(sock, state, time.monotonic() + self.limits.request_seconds)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, None)

    def _evict(self) -> bool:
        """Close the connection that has waited longest for a request; False when every one is writing."""
        waiting = [(c.since, fd) for fd, c in self._conns.items() if c.state != "write"]
        if not waiting:
            return False
        self._drop(min(waiting)[1])
        return True

    def _drop(self, fd: int) -> None:
        conn = self._conns.pop(fd, None)
        if conn is None:
            return
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        conn.sock.close()

    def _want(self, conn: _Conn, events: int) -> None:
        try:
            self._sel.modify(conn.sock, events, None)
        except (KeyError, ValueError, OSError):
            pass

    def _step(self, fd: int, conn: _Conn) -> None:
        """Advance one connection as far as its socket allows."""
        try:
            if conn.state == "handshake":
                conn.sock.do_handshake()  # type: ignore[attr-defined]
                conn.state = "read"
                self._want(conn, selectors.EVENT_READ)
            if conn.state == "read":
                self._read(conn)
            if conn.state == "write":
                self._write(fd, conn)
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError):  # reset, bad TLS, closed: this connection only
            self._drop(fd)

    def _read(self, conn: _Conn) -> None:
        while b"\r\n\r\n" not in conn.buf:
            data = conn.sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed by the client")
            conn.buf += data
            if len(conn.buf) > MAX_HEAD_BYTES:
                self._respond(conn, 431, [], b"", keep_alive=False)
                return
        head, _, rest = bytes(conn.buf).partition(b"\r\n\r\n")
        conn.buf = bytearray(rest)
        self._request(conn, head)

    def _request(self, conn: _Conn, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond(conn, 400, [], b"bad request\n", keep_alive=False)
            return
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = (version == "HTTP/1.1" and connection != "close") or connection == "keep-alive"
        if headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers:
            self._respond(conn, 400, [], b"request bodies are not accepted\n", keep_alive=False)
            return
        self.requests += 1
        try:
            status, extra, body = self._handler(method, target.split("?", 1)[0], headers)
        except Exception:  # noqa: BLE001 - one bad request must not stop the server
            status, extra, body = 500, [], b"internal error\n"
        self._respond(conn, status, extra, body, keep_alive=keep, head_only=method == "HEAD")

    def _respond(self, conn: _Conn, status: int, headers: list[tuple[str, str]], body: bytes, *,
                 keep_alive: bool, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not keep_alive:
            lines.append("Connection: close")
        conn.out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        conn.keep_alive = keep_alive
        conn.state = "write"
        conn.deadline = time.monotonic() + self.limits.response_seconds
        self._want(conn, selectors.EVENT_WRITE)

    def _write(self, fd: int, conn: _Conn) -> None:
        while conn.out:
            sent = conn.sock.send(conn.out)
            conn.out = conn.out[sent:]
        if not conn.keep_alive:
            self._drop(fd)
            return
        conn.state = "read"
        conn.since = conn.deadline = time.monotonic() + self.limits.request_seconds
        self._want(conn, selectors.EVENT_READ)
        if b"\r\n\r\n" in conn.buf:  # a pipelined request already arrived
            self._read(conn)


__all__ = ["Server", "Limits", "MAX_HEAD_BYTES"]

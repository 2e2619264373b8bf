"""One HTTP(S) request with a total deadline that another thread can abort (webhook posts, Pushgateway pushes).

urllib's ``timeout`` applies to each socket operation, so a receiver that drips a byte every few seconds holds
the sender for ever, and nothing can interrupt it from outside. Here the connect, the send and every read get
what is left of one deadline, and :meth:`Request.abort` (called by ``close()``) shuts the socket down at once.
Only the response's status line is read. Credentials in the URL become a basic-auth header. The proxy
variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) are honoured as urllib honours them: an https URL
goes through a ``CONNECT`` tunnel, an http one is sent to the proxy with its absolute URL; the proxy's own
credentials become ``Proxy-Authorization``. The deadline covers the proxy too.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from typing import Any, Iterable

from .redact import split_credentials

MAX_STATUS_LINE = 8192
"""Bytes read at most before the status line must have arrived."""


class HTTPStatusError(OSError):
    """The receiver answered with an error status (``code``)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"HTTP {code}{' ' + reason if reason else ''}")
        self.code = code


class Request:
    """Sends requests one at a time from one thread; ``abort()`` from any thread ends the running one now and
    every later one at once (after ``close()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._aborted = False

    def abort(self) -> None:
        """End the request under way (its ``send`` raises) and refuse later ones."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked connect/send/recv in the sending thread
            except OSError:
                pass

    def send(self, method: str, url: str, body: bytes, headers: Iterable[tuple[str, str]] = (), *,
             deadline: float, context: ssl.SSLContext | None = None) -> int:
        """Send one request; returns the status code (< 400), raises HTTPStatusError (>= 400), TimeoutError
        when ``deadline`` (time.monotonic() seconds) passes, or OSError."""
        bare, user, password = split_credentials(url)
        parts = urllib.parse.urlsplit(bare)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        proxy = _proxy_for(parts.scheme, host)
        proxy_auth: list[str] = []
        if proxy is not None:
            p_bare, p_user, p_password = split_credentials(proxy)
            p_parts = urllib.parse.urlsplit(p_bare if "://" in p_bare else f"http://{p_bare}")
            if p_user is not None:
                token = base64.b64encode(f"{p_user}:{p_password or ''}".encode()).decode()
                proxy_auth = [f"Proxy-Authorization: Basic {token}"]
            sock = _connect(p_parts.hostname or "", p_parts.port or 8080, deadline)
        else:
            sock = _connect(host, port, deadline)
        try:
            self._hold(sock)
            if proxy is not None and https:  # a tunnel to the receiver, then TLS inside it
                sock.settimeout(_left(deadline))
                sock.sendall(("\r\n".join([f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}", *proxy_auth])
                              + "\r\n\r\n").encode("latin-1"))
                _tunnel_open(sock, deadline)
            if https:
                sock.settimeout(_left(deadline))
                sock = (context or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
                self._hold(sock)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host_header = parts.netloc.rpartition("@")[2]  # never the credentials
            if proxy is not None and not https:  # a plain-http proxy takes the absolute URL
                target = f"http://{host_header}{target}"
            lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(body)}",
                     "Connection: close", "User-Agent: nnwatch", *(proxy_auth if not https else [])]
            if user is not None:
                token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
                lines.append(f"Authorization: Basic {token}")
            lines += [f"{k}: {v}" for k, v in headers]
            sock.settimeout(_left(deadline))
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)  # one deadline for it all
            return _status(sock, deadline)
        finally:
            with self._lock:
                self._sock = None
            sock.close()

    def _hold(self, sock: socket.socket) -> None:
        with self._lock:
            if self._aborted:
                raise ConnectionAbortedError("closing")
            self._sock = sock


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL the environment names for ``scheme`` (None: direct, or ``host`` in NO_PROXY)."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return proxy


def _tunnel_open(sock: socket.socket, deadline: float) -> None:
    """Read the proxy's answer to CONNECT up to the blank line; raises unless it is a 2xx."""
    words = _read_until(sock, b"\r\n\r\n", deadline, "the proxy's answer to CONNECT")
    if len(words) < 2 or not words[1].startswith("2"):
        raise ConnectionError(f"proxy refused the tunnel: {' '.join(words[1:])}")


def _read_until(sock: socket.socket, end: bytes, deadline: float, what: str) -> list[str]:
    """Read until ``end`` arrives, each read bounded by what is left of the deadline; the first line's words."""
    buf = b""
    while end not in buf:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError(f"connection closed before {what}")
        buf += chunk
        if len(buf) > MAX_STATUS_LINE:
            raise ConnectionError(f"no {what}")
    return buf.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)


def _resolve(host: str, port: int, deadline: float) -> list[tuple]:
    """getaddrinfo under the deadline: a name lookup runs in a short-lived daemon thread (the resolver itself
    cannot be interrupted; a lookup past the deadline is abandoned, and its thread ends with the lookup)."""
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # a literal: no lookup
    except ValueError:
        pass
    done = threading.Event()
    box: list[Any] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            box.append(exc)
        done.set()

    threading.Thread(target=lookup, name="nnwatch-resolve", daemon=True).start()
    if not done.wait(_left(deadline)):
        raise TimeoutError(f"resolving {host} took longer than the deadline")
    if isinstance(box[0], OSError):
        raise box[0]
    return box[0]


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection to the first address of ``host`` that answers, all within the deadline."""
    error: OSError | None = None
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, TimeoutError):
                raise
    raise error or OSError(f"no address for {host}")


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _status(sock: socket.socket, deadline: float) -> int:
    """Read up to the end of the status line, each read bounded by what is left of the deadline."""
    words = _read_until(sock, b"\r\n", deadline, "an HTTP status line")
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise ConnectionError("not an HTTP response")
    code = int(words[1])
    if code >= 400:
        raise HTTPStatusError(code, words[2] if len(words) > 2 else "")
    return code


__all__ = ["Request", "HTTPStatusError"]

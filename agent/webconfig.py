"""The Prometheus exporter-toolkit web configuration (``--web.config.file`` of node_exporter): TLS and basic
auth for /metrics, read from the same YAML file the rest of a Prometheus deployment uses.

Supported keys: ``tls_server_config`` (``cert_file``, ``key_file``, ``client_ca_file``, ``client_auth_type``,
``min_version``, ``max_version``) and ``basic_auth_users`` (user name -> bcrypt hash, as ``htpasswd -nBC 10``
or ``python -c "import bcrypt; print(bcrypt.hashpw(b'pw', bcrypt.gensalt()).decode())"`` print it). Relative
paths are read relative to the file. Other keys are refused, so a typo is not a silently open endpoint. Needs
PyYAML, and bcrypt when users are configured (``pip install nnwatch[webconfig]``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
                "RequireAnyClientCert": ssl.CERT_REQUIRED, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class WebConfig:
    """A parsed web configuration file."""

    path: str
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)
    """User name -> bcrypt hash (never shown)."""

    def context(self) -> ssl.SSLContext | None:
        """The server TLS context, or None when the file configures no TLS."""
        if self.cert_file is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _VERSIONS[self.min_version]
        if self.max_version:
            ctx.maximum_version = _VERSIONS[self.max_version]
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        return ctx


def load(path: str) -> WebConfig:
    """Read and check ``path``; raises ValueError saying what is wrong and what to write instead."""
    try:
        import yaml
    except ImportError:
        raise ValueError("web_config needs PyYAML: pip install 'nnwatch[webconfig]'") from None
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ValueError(f"web_config {path!r} cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"web_config {path!r} is not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"web_config {path!r} must be a mapping with tls_server_config and/or basic_auth_users")
    unknown = sorted(set(raw) - {"tls_server_config", "basic_auth_users"})
    if unknown:
        raise ValueError(f"web_config {path!r}: unsupported key(s) {', '.join(unknown)}; nnwatch reads "
                         "tls_server_config and basic_auth_users")
    base = Path(path).resolve().parent
    tls = raw.get("tls_server_config") or {}
    if not isinstance(tls, dict) or set(tls) - _TLS_KEYS:
        raise ValueError(f"web_config {path!r}: tls_server_config takes {', '.join(sorted(_TLS_KEYS))}")
    files = {k: str(base / tls[k]) if tls.get(k) else None for k in ("cert_file", "key_file", "client_ca_file")}
    if (files["cert_file"] is None) != (files["key_file"] is None):
        raise ValueError(f"web_config {path!r}: tls_server_config needs both cert_file and key_file")
    auth = str(tls.get("client_auth_type", "NoClientCert"))
    if auth not in _CLIENT_AUTH:
        raise ValueError(f"web_config {path!r}: client_auth_type must be one of {', '.join(_CLIENT_AUTH)}")
    if _CLIENT_AUTH[auth] != ssl.CERT_NONE and auth != "RequestClientCert" and not files["client_ca_file"]:
        raise ValueError(f"web_config {path!r}: client_auth_type {auth} needs client_ca_file")
    for key in ("min_version", "max_version"):
        if key in tls and tls[key] not in _VERSIONS:
            raise ValueError(f"web_config {path!r}: {key} must be TLS12 or TLS13")
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ValueError(f"web_config {path!r}: basic_auth_users maps user names to bcrypt hashes")
    hashes = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(f"web_config {path!r}: the password of {user!r} must be a bcrypt hash ($2y$...), "
                             "e.g. from htpasswd -nBC 10 USER")
        hashes[str(user)] = hashed.encode()
    if hashes:
        _bcrypt()
    cfg = WebConfig(path=str(path), client_auth_type=auth, min_version=str(tls.get("min_version", "TLS12")),
                    max_version=tls.get("max_version"), users=hashes, **files)
    try:
        cfg.context()
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"web_config {path!r}: cannot load the TLS files ({exc})") from None
    return cfg


def _bcrypt() -> Any:
    try:
        import bcrypt
    except ImportError:
        raise ValueError("basic_auth_users in web_config need bcrypt: pip install 'nnwatch[webconfig]'") from None
    return bcrypt


class BasicAuth:
    """Checks ``Authorization: Basic ...`` headers against bcrypt hashes. A bcrypt check takes tens of
    milliseconds by design: outcomes are remembered by a digest of the header (at most ``cache_size``), so a
    scraper pays it once, not on every scrape."""

    def __init__(self, users: dict[str, bytes], cache_size: int = 256) -> None:
        self._users = dict(users)
        self._bcrypt = _bcrypt()
        self._dummy = self._bcrypt.hashpw(b"nnwatch", self._bcrypt.gensalt(rounds=4))
        self._cache: dict[bytes, bool] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def allows(self, header: str) -> bool:
        """Whether the header carries a configured user and its password."""
        if not header.startswith("Basic "):
            return False
        key = hashlib.sha256(header.encode("latin-1", "replace")).digest()
        with self._lock:
            known = self._cache.get(key)
        if known is not None:
            return known
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        ok = self._bcrypt.checkpw(password.encode(), hashed if hashed is not None else self._dummy) and hashed is not None
        with self._lock:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = ok
        return ok


__all__ = ["WebConfig", "BasicAuth", "load"]

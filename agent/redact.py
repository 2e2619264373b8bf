"""Secrets in URLs: split the credentials off a URL, and show URLs and texts without them (logs, reprs, errors)."""

from __future__ import annotations

import urllib.parse

HIDDEN = "***"
"""What a secret is replaced with."""


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without user:password@, user, password)``; user and password are percent-decoded, None when absent."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    bare = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return bare, user, password


def redact_url(url: str | None, *, path_is_secret: bool = False) -> str | None:
    """``url`` with its password (and, with ``path_is_secret``, its path and query: a Slack webhook's token)
    replaced by ``***``. Never raises: an unparsable URL is hidden whole."""
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(str(url))
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.rsplit("@", 1)[1]
            netloc = f"{parts.username}:{HIDDEN}@{netloc}"
        path, query = parts.path, parts.query
        if path_is_secret and (path.strip("/") or query):
            path, query = "/" + HIDDEN, ""
        return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, ""))
    except ValueError:
        return HIDDEN


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each non-empty secret (and its percent-encoded form) replaced."""
    for secret in secrets:
        if secret:
            for form in {secret, urllib.parse.quote(secret, safe="")}:
                text = text.replace(form, HIDDEN)
    return text


__all__ = ["HIDDEN", "split_credentials", "redact_url", "redact_text"]

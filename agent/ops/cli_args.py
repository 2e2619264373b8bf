"""Validation of command-line input: PromQL label matchers, Prometheus durations, thresholds, output paths.

Each parser returns the value or raises :class:`UsageError` with one line saying what was wrong and what to
write instead; ``nnwatch`` prints that line and exits with status 2 (argparse's convention for bad usage).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from ..config import check_threshold
from ..checks.catalogue import BY_NAME


class UsageError(ValueError):
    """Invalid command-line input; the message is one line that says what to pass."""


_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_STRING = r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'|`[^`]*`"
_MATCHER = re.compile(rf"\s*({_LABEL})\s*(=~|!~|!=|=)\s*({_STRING})\s*")
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def label_matchers(text: str, what: str = "--selector") -> str:
    """A comma-separated list of PromQL label matchers (``job=~"train-.*", namespace="ml"``), or empty.

    Values must be quoted, as inside ``{...}`` in PromQL; regular expressions must compile."""
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _MATCHER.match(text, pos)
        if m is None:
            raise UsageError(f"{what}: {text!r} is not a list of PromQL label matchers; write e.g. "
                             "'namespace=\"ml\", job=~\"train-.*\"' (values in double quotes)")
        if m.group(2) in ("=~", "!~"):
            try:
                re.compile(m.group(3)[1:-1])
            except re.error as exc:
                raise UsageError(f"{what}: the regular expression {m.group(3)} does not compile ({exc})") from None
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise UsageError(f"{what}: expected ',' between label matchers at {text[pos:]!r}")
            pos += 1
            if not text[pos:].strip():
                raise UsageError(f"{what}: {text!r} ends with a comma")
    return text


def duration(text: str, what: str, positive: bool = False) -> str:
    """A Prometheus duration (``30s``, ``5m``, ``1h30m``); ``positive`` rejects ``0s``."""
    m = _DURATION.match(text.strip())
    if not text.strip() or m is None:
        raise UsageError(f"{what}: {text!r} is not a Prometheus duration; write e.g. 30s, 5m, 1h or 1h30m")
    if positive and duration_seconds(text) <= 0:
        raise UsageError(f"{what}: must be longer than 0, got {text!r}")
    return text.strip()


def duration_seconds(text: str) -> float:
    m = _DURATION.match(text.strip())
    if m is None:
        raise UsageError(f"{text!r} is not a Prometheus duration")
    return sum(int(g) * s for g, s in zip(m.groups(), _DURATION_SECONDS) if g)


def threshold(key: str, raw: str, default: float | int | str) -> float | str:
    """A rule threshold: a duration where the default is one, else a finite number in the parameter's range."""
    what = f"--threshold {key}"
    if isinstance(default, str):
        return duration(raw, what, positive=True)
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{what}: {raw!r} is not a number (default {default!r})") from None
    if not math.isfinite(value):
        raise UsageError(f"{what}: must be a finite number, got {raw!r}")
    check, _, name = key.partition(".")
    if check in BY_NAME and name in BY_NAME[check].thresholds:
        try:
            check_threshold(key, value)
        except ValueError as exc:
            raise UsageError(f"{what}: {exc}") from None
    elif name.endswith("ratio") and not 0 < value <= 1:
        raise UsageError(f"{what}: a ratio in (0, 1], got {raw!r} (default {default!r})")
    elif name.endswith("factor") and value <= 1:
        raise UsageError(f"{what}: a factor above 1, got {raw!r} (default {default!r})")
    elif value < 0:
        raise UsageError(f"{what}: must be >= 0, got {raw!r} (default {default!r})")
    return value


def output_path(text: str, what: str = "--output") -> Path:
    """A file path whose folder exists and is writable (the file itself is created or replaced)."""
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{what}: {text} is a directory; give a file name, e.g. {path / 'nnwatch.rules.yml'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{what}: the folder {folder} does not exist; create it first or choose another path")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{what}: cannot write {text} (permission denied)")
    return path


def url(text: str, what: str, schemes: tuple[str, ...] = ("http://", "https://", "file://")) -> str:
    """A URL with one of ``schemes``."""
    if not text.startswith(schemes) or len(text) <= max(len(s) for s in schemes if text.startswith(s)):
        raise UsageError(f"{what}: {text!r} is not a URL starting with {' or '.join(schemes)}")
    return text


__all__ = ["UsageError", "label_matchers", "duration", "duration_seconds", "threshold", "output_path", "url"]

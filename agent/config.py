"""Options of the agent: defaults, ``NNWATCH_*`` environment variables, validation at attach()."""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import math
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Mapping

from .checks.catalogue import BY_NAME
from .checks.thresholds import THRESHOLD_DOCS
from .redact import redact_url

DEFAULT_PORT = 9945
"""Default /metrics port (plus LOCAL_RANK in distributed jobs)."""

_UNSET: Any = object()


@dataclass(frozen=True)
class Options:
    """Every knob of the agent. Each field can also be set with ``NNWATCH_<FIELD>`` in the environment;
    an explicit argument to ``attach()`` wins over the environment, which wins over the default."""

    port: int | None = DEFAULT_PORT
    """TCP port of /metrics; 0 picks a free port, None serves nothing. LOCAL_RANK is added when set."""
    addr: str = "0.0.0.0"
    """Address the /metrics server binds to: every interface by default (Prometheus scrapes the pod's IP); use
    127.0.0.1 to serve only this machine. An IP address or a resolvable host name, checked at attach()."""
    tls_cert: str | None = None
    """Path of a PEM certificate; with ``tls_key`` /metrics is served over HTTPS."""
    tls_key: str | None = None
    """Path of the PEM private key matching ``tls_cert``."""
    web_config: str | None = None
    """Path of an exporter-toolkit web configuration file (node_exporter's ``--web.config.file``): TLS
    (``tls_server_config``) and basic auth with bcrypt hashes (``basic_auth_users``) for /metrics. ``tls_cert``
    and ``tls_key`` are a shortcut for its TLS part; give one or the other. Env: ``NNWATCH_WEB_CONFIG``."""
    sample_every: int = 10
    """Heavy statistics (norms, update ratios, activations) are computed every this many steps; with an
    overhead budget this is the shortest interval."""
    overhead_budget: float | None = 0.01
    """Share of step time the agent may take (0.01 = 1%): the sampling interval starts at ``sample_every``
    and doubles (after the first 100 steps, up to 1000) when sampled steps would cost more, which only happens for small models with
    very short steps. None: a fixed ``sample_every``. Setting ``sample_every`` without a budget also means a
    fixed interval. The live interval is ``nnwatch_sample_interval_steps``."""
    activations: bool = True
    """Observe activation functions (modules and functional calls) on sampled steps."""
    update_ratios: bool = True
    """Measure update norm / weight norm across sampled optimizer steps (needs a transient weight copy)."""
    update_copy_max_bytes: int = 512 * 2**20
    """Largest transient weight copy for update ratios, in bytes; bigger models are measured a slice of
    layers per sampled step, in rotation."""
    native: bool = True
    """Build and use the C++ statistics kernels for CPU parameters (agent.collect.native): a background build of a few
    seconds the first time on a machine, cached afterwards; without a C++ compiler the torch-op path is
    used. No effect on GPU models. Env: ``NNWATCH_NATIVE=0`` also turns it off."""
    dead_window: int = 8
    """A unit counts as dead when it was never positive in the forward passes of this many consecutive sampled
    steps, and over at least 256 observed positions (more steps when they saw fewer: a policy acting one state
    at a time)."""
    max_modules: int = 200
    """Cap on per-module series (each of: parameter layers, activations). Totals always cover the whole model."""
    num_classes: int | None = None
    """Number of classes of a classification loss; enables the loss-at-init check (expects ln(num_classes))."""
    expected_initial_loss: float | None = None
    """Expected first loss, for losses that are not plain cross-entropy over ``num_classes`` classes."""
    stall_seconds: float | None = None
    """Hard limit in seconds without a completed step before training_stalled fires (None: learned only)."""
    webhook_url: str | None = None
    """Slack-compatible incoming-webhook URL that receives each new finding and its resolution."""
    webhook_digest_seconds: float = 2.0
    """Findings and resolutions posted within this many seconds of the first of a burst go out as one digest
    message (0: one post each)."""
    runbook_base_url: str | None = None
    """URL of a copy of docs/runbooks.md (your wiki, an internal docs site, ``nnwatch runbooks --path`` of a
    shared install); each finding links to ``<url>#<alert name in lower case>``. None: the runbooks installed
    with the package (a ``file://`` URL on this machine). Env: ``NNWATCH_RUNBOOK_BASE_URL``."""
    log_findings: bool = True
    """Log each finding and its resolution through the ``nnwatch`` logger."""
    console_log: bool = True
    """When the application has not configured logging, print the agent's INFO lines (where /metrics is served,
    findings, resolutions, the summary at close) to stderr; False leaves the ``nnwatch`` logger alone."""
    name: str | None = None
    """The model's name in log lines when a process watches several models (default: its class name)."""
    checks: bool = True
    """Run the in-process check engine on each sampled step."""
    skip_checks: str = ""
    """Comma-separated checks not to run in-process, e.g. "loss_not_decreasing" for a GAN, whose losses are a
    game rather than a descent."""
    thresholds: dict[str, float] | None = None
    """Overrides of catalogue thresholds, e.g. {"dead_units.ratio": 0.3}, or the same as a string
    "dead_units.ratio=0.3,memory_leak.samples=20" (also the form of NNWATCH_THRESHOLDS). Range-checked: fractions
    in 0..1, counts whole numbers >= 1, nothing negative."""
    job: str | None = None
    """Job name shown in webhook messages and the Pushgateway job (default: the script's name)."""
    per_module_ranks: str = "0"
    """In a multi-process job, the ranks that export per-module series: "0", "0,8" or "all". Every rank
    exports its cheap per-rank scalars; sharded (FSDP) models export per-module squared norms on every rank."""
    fingerprint_every: int = 1000
    """Steps between two weight fingerprints (nnwatch_weight_fingerprint, compared across ranks for desync);
    the fingerprint is held between them, so keep it well above a scrape interval's worth of steps."""
    pushgateway_url: str | None = None
    """Pushgateway base URL (e.g. http://pushgateway:9091): the metrics are pushed on close() and every
    ``push_interval`` seconds, for jobs too short to be scraped. Unreachable: one log line, training goes on."""
    push_interval: float | None = None
    """Seconds between pushes to the Pushgateway while training (None: push only on close())."""
    history: str | None = None
    """Path of a local history file (SQLite, created with its folder when missing; an existing history of the same
    version is continued): every sampled step's loss, learning rates, global and per-layer norms, update ratios,
    activation fractions and memory, and every finding, written off the training thread after each sampled step.
    Bounded: the newest 512 samples at full resolution, older ones thinned by powers of two (75 MB measured for a
    million steps of a 200-layer model at the defaults). Read it with ``nnwatch report FILE -o report.html``."""
    tensorboard_dir: str | None = None
    """Folder for TensorBoard event files with the same scalars as ``history`` (and the findings as text),
    written off the training thread after each sampled step; needs ``pip install tensorboard``."""

    @property
    def skipped_checks(self) -> frozenset[str]:
        """The checks named in ``skip_checks``."""
        return frozenset(c.strip() for c in str(self.skip_checks or "").split(",") if c.strip())

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **explicit: Any) -> "Options":
        """Build options from explicit arguments, then ``NNWATCH_*`` variables, then defaults; validate."""
        env = os.environ if env is None else env
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in explicit if k not in names)
        if unknown:
            raise TypeError(
                f"attach() got unknown option(s) {', '.join(unknown)}; valid options are: {', '.join(sorted(names))}"
            )
        values: dict[str, Any] = {}
        for name, f in names.items():
            if name in explicit and explicit[name] is not _UNSET:
                values[name] = _coerce(name, f, explicit[name])
            elif f"NNWATCH_{name.upper()}" in env:
                values[name] = _parse_env(name, f, env[f"NNWATCH_{name.upper()}"])
        if "sample_every" in values and "overhead_budget" not in values:
            values["overhead_budget"] = None  # an explicit interval is a fixed interval
        opts = cls(**values)
        opts.validate()
        return opts

    def __repr__(self) -> str:
        """Every option, with the secrets in URLs hidden (a webhook URL's path is its token)."""
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "webhook_url":
                value = redact_url(value, path_is_secret=True)
            elif f.name == "pushgateway_url":
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Options({', '.join(shown)})"

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the bad option and what to pass instead."""
        for f in dataclasses.fields(self):
            if str(f.type) == "bool" and not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"{f.name} must be True or False, got {getattr(self, f.name)!r}")
        _check_addr(self.addr)
        if self.port is not None:
            if isinstance(self.port, bool) or not isinstance(self.port, int):
                raise TypeError(f"port must be an int in 0..65535 or None, got {self.port!r}")
            if not 0 <= self.port <= 65535:
                raise ValueError(f"port must be in 0..65535 (0 picks a free port) or None to serve nothing, got {self.port}")
        for name in ("sample_every", "dead_window", "max_modules", "fingerprint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.overhead_budget is not None and (not _finite_number(self.overhead_budget) or not 0 < self.overhead_budget < 1):
            raise ValueError(f"overhead_budget must be a fraction of step time in (0, 1), e.g. 0.01 for 1%, or None, got {self.overhead_budget!r}")
        if not isinstance(self.update_copy_max_bytes, int) or self.update_copy_max_bytes < 0:
            raise ValueError(f"update_copy_max_bytes must be an int >= 0, got {self.update_copy_max_bytes!r}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2
        ):
            raise ValueError(f"num_classes must be an int >= 2 (the number of classes of the loss) or None, got {self.num_classes!r}")
        if self.expected_initial_loss is not None and not _finite_number(self.expected_initial_loss):
            raise ValueError(f"expected_initial_loss must be a finite number, got {self.expected_initial_loss!r}")
        if self.stall_seconds is not None and (not _finite_number(self.stall_seconds) or self.stall_seconds <= 0):
            raise ValueError(f"stall_seconds must be a positive number of seconds or None, got {self.stall_seconds!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (PEM file paths), or neither")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name} file not found: {path!r}")
        if self.tls_cert is not None and self.tls_key is not None:
            _check_tls(self.tls_cert, self.tls_key)
        if self.web_config is not None:
            from .webconfig import load

            if self.tls_cert is not None:
                raise ValueError("give TLS either in web_config (tls_server_config) or as tls_cert/tls_key, not both")
            load(str(self.web_config))
        if self.thresholds is not None:
            if not isinstance(self.thresholds, dict):
                raise TypeError("thresholds must be a dict like {'dead_units.ratio': 0.3} or a string like "
                                "'dead_units.ratio=0.3,memory_leak.samples=20'")
            for key, value in self.thresholds.items():
                check_threshold(str(key), value)
        parse_ranks(self.per_module_ranks)
        unknown = [c for c in self.skipped_checks if c not in BY_NAME]
        if unknown:
            raise ValueError(f"skip_checks names unknown check(s) {', '.join(unknown)}; valid: {', '.join(BY_NAME)}")
        if self.pushgateway_url is not None and not str(self.pushgateway_url).startswith(("http://", "https://")):
            raise ValueError("pushgateway_url must be an http(s):// URL of a Pushgateway, e.g. http://pushgateway:9091")
        if self.push_interval is not None and (not _finite_number(self.push_interval) or self.push_interval <= 0):
            raise ValueError(f"push_interval must be a positive number of seconds or None, got {self.push_interval!r}")
        if self.webhook_url is not None and not str(self.webhook_url).startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http(s):// URL (e.g. a Slack incoming webhook)")
        if self.runbook_base_url is not None and not str(self.runbook_base_url).startswith(("http://", "https://", "file://")):
            raise ValueError(f"runbook_base_url must be an http(s):// or file:// URL of docs/runbooks.md, got {self.runbook_base_url!r}")
        for name in ("history", "tensorboard_dir"):
            path = getattr(self, name)
            if path is not None and (not isinstance(path, (str, os.PathLike)) or not os.fspath(path)):
                raise TypeError(f"{name} must be a file system path (str or pathlib.Path) or None, got {path!r}")
        if self.history is not None and os.path.isdir(self.history):
            raise ValueError(f"history must be the path of a file, e.g. 'run.sqlite'; {self.history!r} is a folder")
        if self.tensorboard_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard_dir needs the tensorboard package: pip install tensorboard "
                             "(or leave tensorboard_dir unset; history= with `nnwatch report` needs no server)")
        if not _finite_number(self.webhook_digest_seconds) or not 0 <= self.webhook_digest_seconds <= 600:
            raise ValueError(f"webhook_digest_seconds must be a number of seconds in 0..600, got {self.webhook_digest_seconds!r}")


def check_threshold(key: str, value: Any) -> None:
    """Raise ValueError unless ``key`` names a catalogue threshold and ``value`` is in its range: nothing
    negative, fractions ("fraction ..."/"share ..." in THRESHOLD_DOCS) at most 1, counts (integer defaults) whole
    numbers >= 1 (byte sizes >= 0)."""
    check, _, name = key.partition(".")
    if check not in BY_NAME or name not in BY_NAME[check].thresholds:
        valid = ", ".join(f"{c}.{t}" for c in BY_NAME for t in BY_NAME[c].thresholds)
        raise ValueError(f"unknown threshold {key!r}; valid names: {valid}")
    if not _finite_number(value):
        raise ValueError(f"threshold {key!r} must be a finite number, got {value!r}")
    doc = THRESHOLD_DOCS.get(key, "")
    default = BY_NAME[check].thresholds[name]
    if value < 0:
        raise ValueError(f"threshold {key!r} ({doc}) must be >= 0, got {value!r} (default {default!r})")
    if doc.startswith(("fraction", "share")) and value > 1:
        raise ValueError(f"threshold {key!r} is a fraction in 0..1 ({doc}), got {value!r}; e.g. 0.3 for 30% "
                         f"(default {default!r})")
    if isinstance(default, int) and not isinstance(default, bool):
        low = 0 if name.endswith("_bytes") else 1
        if value != int(value) or value < low:
            raise ValueError(f"threshold {key!r} counts {doc}: a whole number >= {low}, got {value!r} "
                             f"(default {default!r})")


def parse_thresholds(text: str, source: str = "thresholds") -> dict[str, float]:
    """``"dead_units.ratio=0.3,memory_leak.samples=20"`` -> a dict; errors name ``source`` and the bad part."""
    out: dict[str, float] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{source}: {part!r} is not name=value; write e.g. "
                             "'dead_units.ratio=0.3,memory_leak.samples=20'")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{source}: the value of {key.strip()} must be a number, got {value.strip()!r} "
                             "(e.g. 'dead_units.ratio=0.3')") from None
    return out


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(value: Any, source: str) -> bool:
    """True/False, 1/0, or a string from _TRUE/_FALSE (any case); ValueError naming ``source`` otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValueError(f"{source} must be True or False (or one of the strings {'/'.join(_TRUE)} for True, "
                     f"{'/'.join(_FALSE)} for False), got {value!r}")


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    """An explicit argument in the option's type where the text form is unambiguous (booleans, thresholds)."""
    kind = str(f.type)
    if kind == "bool":
        return parse_bool(value, name)
    if kind.startswith("dict") and isinstance(value, str):
        return parse_thresholds(value, name)
    return value


def _check_addr(addr: Any) -> None:
    """The bind address must be an IP address or a host name that resolves (checked once, at attach())."""
    if not isinstance(addr, str):
        raise TypeError(f"addr must be a string such as '0.0.0.0' (every interface) or '127.0.0.1', got {addr!r}")
    if addr in ("", "localhost"):
        return
    try:
        ipaddress.ip_address(addr.strip("[]"))
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(addr, None)
    except (OSError, UnicodeError):
        raise ValueError(f"addr {addr!r} is neither an IP address nor a host name that resolves; pass e.g. "
                         "'0.0.0.0' (every interface), '::' or '127.0.0.1' (this machine only)") from None


def _check_tls(cert: str, key: str) -> None:
    """Load the certificate and key once, so an unreadable or mismatched pair fails at attach(), not at serving."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate {cert!r} with key {key!r} ({exc}); pass readable PEM "
                         "files of one certificate and its private key") from None


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_env(name: str, f: dataclasses.Field, raw: str) -> Any:
    """Parse one NNWATCH_* value by the field's declared type; errors name the variable."""
    var = f"NNWATCH_{name.upper()}"
    text = raw.strip()
    kind = str(f.type)
    try:
        if kind.startswith("bool"):
            return parse_bool(text, var)
        if "None" in kind and text.lower() in ("", "none", "off"):
            return None
        if kind.startswith("dict"):
            return parse_thresholds(text, var)
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        return text
    except ValueError as exc:
        if str(exc).startswith(var):
            raise
        raise ValueError(f"{var}={raw!r} is not a valid {kind.split(' ')[0]} for option {name}") from None



def parse_ranks(spec: str) -> frozenset[int] | None:
    """``"0"``, ``"0,8"`` -> those ranks; ``"all"`` -> None (every rank). Raises ValueError otherwise."""
    text = str(spec).strip().lower()
    if text in ("all", "*"):
        return None
    try:
        ranks = frozenset(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"per_module_ranks must be 'all' or comma-separated rank numbers like '0' or '0,8', got {spec!r}") from None
    if not ranks or min(ranks) < 0:
        raise ValueError(f"per_module_ranks must name at least one rank >= 0 (or 'all'), got {spec!r}")
    return ranks


__all__ = ["Options", "DEFAULT_PORT", "parse_ranks", "parse_bool", "parse_thresholds", "check_threshold"]

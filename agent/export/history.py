"""The local history: every sampled step's model and per-layer values, and every finding, in one SQLite file.

For people without Prometheus: ``attach(..., history="run.sqlite")`` (or ``NNWATCH_HISTORY``), then
``nnwatch report run.sqlite -o report.html``. Written off the training thread (agent.export.sink): the training
thread only queues the immutable snapshot. Batches are one transaction each; the file is in WAL mode while the
job runs (a report can read it meanwhile) and a single self-contained file after close().

The file stays bounded: the newest ``recent`` samples are kept at full resolution, older ones thinned by
powers of two (a sample ``age`` samples old survives when its number is a multiple of 2^k, k growing by one for
every band of ``recent * 2^k`` samples), so a run keeps about ``recent * log2(samples / recent)`` samples.
Every finding is kept. Per-layer rows follow the ``max_modules`` cap, spread over the model's depth.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .._version import __version__
from ..guard import Guard
from ..snapshot import Snapshot
from .collector import spread_select
from .sink import SnapshotSink

SCHEMA_VERSION = 1
"""Bumped whenever the tables change; a reader refuses any other version."""

RECENT_SAMPLES = 512
"""Samples kept at full resolution; older ones are thinned by powers of two."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
  seq INTEGER PRIMARY KEY, step INTEGER NOT NULL, time REAL NOT NULL, loss REAL, loss_nonfinite INTEGER,
  val_loss REAL, lrs TEXT, grad_norm REAL, weight_norm REAL, update_ratio REAL, grad_clip_factor REAL,
  step_seconds REAL, host_rss REAL, cuda_allocated REAL, cuda_reserved REAL);
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, fn TEXT, UNIQUE (kind, name));
CREATE TABLE IF NOT EXISTS layers (
  seq INTEGER NOT NULL, id INTEGER NOT NULL, grad_norm REAL, weight_norm REAL, update_ratio REAL,
  PRIMARY KEY (seq, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS activations (
  seq INTEGER NOT NULL, id INTEGER NOT NULL, dead REAL, saturated REAL, PRIMARY KEY (seq, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings (
  id INTEGER PRIMARY KEY, step INTEGER NOT NULL, since INTEGER NOT NULL, time REAL NOT NULL, status TEXT NOT NULL,
  check_name TEXT NOT NULL, severity TEXT NOT NULL, module TEXT, also TEXT, message TEXT NOT NULL, value REAL);
"""


class HistoryError(ValueError):
    """A history file that cannot be read or continued: not SQLite, truncated, or another schema version."""


def check_file(path: str | os.PathLike[str]) -> None:
    """Raise HistoryError unless ``path`` looks like a whole SQLite file (header, size); cheap, reads 100 bytes."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(100)
    if not head.startswith(b"SQLite format 3\x00"):
        raise HistoryError(f"{p} is not an nnwatch history (not an SQLite file)")
    if len(head) < 100:
        raise HistoryError(f"{p} is truncated ({size} bytes, less than an SQLite header)")
    page = struct.unpack(">H", head[16:18])[0]
    page = 65536 if page == 1 else page
    pages = struct.unpack(">I", head[28:32])[0]
    wal = Path(f"{p}-wal")
    if pages and page * pages > size and not (wal.exists() and wal.stat().st_size):
        raise HistoryError(f"{p} is truncated ({size} of {page * pages} bytes); it cannot be read")


def read_meta(conn: sqlite3.Connection, path: Any) -> dict[str, str]:
    """The meta table; HistoryError unless it is a history of this schema version."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"{path} is not an nnwatch history ({exc})") from None
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise HistoryError(f"{path} is a history of schema version {version} (written by nnwatch "
                           f"{meta.get('nnwatch_version', '?')}); this nnwatch {__version__} reads version "
                           f"{SCHEMA_VERSION}: use the nnwatch that wrote it, or record a new history")
    return meta


def open_history(path: str | os.PathLike[str], *, readonly: bool = False) -> sqlite3.Connection:
    """Open (or, for writing, create) a history; HistoryError when it is not one of this version."""
    p = Path(path)
    exists = p.exists() and p.stat().st_size > 0
    if readonly and not p.exists():
        raise HistoryError(f"{p} does not exist")
    if exists:
        check_file(p)
    try:
        if readonly:
            conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(p, check_same_thread=False, isolation_level=None)
    except (sqlite3.Error, OSError) as exc:
        raise HistoryError(f"cannot open the history {p}: {exc}") from None
    try:
        if exists or readonly:
            read_meta(conn, p)
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last batches, never the file
            conn.executescript(_SCHEMA)
            conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("nnwatch_version", __version__),
                ("created", f"{time.time():.3f}")])
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise HistoryError(f"{p} cannot be used as an nnwatch history ({exc})") from None
    except HistoryError:
        conn.close()
        raise
    return conn


def thin_ranges(newest: int, recent: int) -> Iterator[tuple[int, int, int]]:
    """(first, last, modulus): after sample ``newest`` completed a block of ``recent`` samples, the samples
    numbered first..last (inclusive) just entered band k and keep only multiples of modulus = 2^k."""
    k = 1
    while True:
        edge = newest - recent * (2 ** k - 1)  # the newest sample of band k
        if edge < 0:
            return
        yield max(0, edge - recent + 1), edge, 2 ** k
        k += 1


def kept(seq: int, newest: int, recent: int) -> bool:
    """Whether sample ``seq`` survives thinning when ``newest`` is the newest (the rule thin_ranges applies,
    evaluated at the last thinning point)."""
    done = newest - (newest + 1) % recent  # the last sample at which thinning ran
    age = done - seq
    if age < recent:
        return True
    k = 1
    while age >= recent * (2 ** (k + 1) - 1):
        k += 1
    return seq % (2 ** k) == 0


class HistoryWriter(SnapshotSink):
    """Writes snapshots and findings to the history file on its own thread."""

    probe = "history"

    def __init__(self, path: str | os.PathLike[str], guard: Guard | None = None, *, max_modules: int = 200,
                 recent: int = RECENT_SAMPLES, max_queue: int = 1024) -> None:
        self.path = Path(path)
        self.recent = recent
        self.max_modules = max_modules
        self._conn = open_history(self.path)  # on the calling thread: a bad path fails at attach()
        last = self._conn.execute("SELECT max(seq) FROM samples").fetchone()[0]
        self._seq = 0 if last is None else last + 1
        self._ids = {(kind, name): i for i, kind, name in self._conn.execute("SELECT id, kind, name FROM series")}
        self._picked: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
        super().__init__(guard, max_queue=max_queue)

    def record(self, snap: Snapshot) -> None:
        """Queue a sampled step (training thread; never blocks)."""
        self.put(snap)

    def finding(self, status: str, f: Any, step: int, also: Sequence[str] = ()) -> None:
        """Queue a finding (an agent.checks Finding) that fired (``status`` "firing", ``also``: the other modules of the same line) or
        resolved at ``step``."""
        self.put((status, f, step, tuple(also), time.time()))

    # -- the writer thread ------------------------------------------------------------------------------
    def write(self, batch: list[Any]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for rec in batch:
                if isinstance(rec, Snapshot):
                    self._sample(rec)
                else:
                    self._finding(*rec)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def finish(self) -> None:
        conn = self._conn
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file once the job is done
        except sqlite3.OperationalError:
            pass  # a reader holds it open: it stays in WAL mode, which readers handle too
        finally:
            conn.close()

    def _sample(self, s: Snapshot) -> None:
        seq = self._seq
        self._seq += 1
        mem = s.memory
        lrs = ",".join(repr(float(v)) for v in s.learning_rates) if s.learning_rates else None
        self._conn.execute("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
            seq, s.step, s.time, s.loss, s.loss_nonfinite, s.val_loss, lrs, s.grad_norm, s.weight_norm,
            s.update_ratio, s.grad_clip_factor, s.step_seconds, mem.host_rss,
            sum(mem.cuda_allocated.values()) if mem.cuda_allocated else None,
            sum(mem.cuda_reserved.values()) if mem.cuda_reserved else None))
        layers = self._capped("layer", [l.module for l in s.layers])
        self._conn.executemany("INSERT INTO layers VALUES (?,?,?,?,?)", [
            (seq, self._id("layer", l.module, None), l.grad_norm, l.weight_norm, l.update_ratio)
            for l in s.layers if l.module in layers])
        acts = self._capped("activation", [a.key for a in s.activations])
        self._conn.executemany("INSERT INTO activations VALUES (?,?,?,?)", [
            (seq, self._id("activation", a.key, a.kind), a.dead_ratio, a.saturated_ratio)
            for a in s.activations if a.key in acts and (a.dead_ratio is not None or a.saturated_ratio is not None)])
        if (seq + 1) % self.recent == 0:
            self._thin(seq)

    def _thin(self, newest: int) -> None:
        for first, last, mod in thin_ranges(newest, self.recent):
            for table in ("samples", "layers", "activations"):
                self._conn.execute(f"DELETE FROM {table} WHERE seq BETWEEN ? AND ? AND seq % ? != 0",
                                   (first, last, mod))

    def _finding(self, status: str, f: Any, step: int, also: tuple[str, ...], at: float) -> None:
        self._conn.execute(
            "INSERT INTO findings (step, since, time, status, check_name, severity, module, also, message, value) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (step, f.step, at, status, f.check, f.severity, f.module, "\n".join(also) or None, f.message, f.value))

    def _capped(self, kind: str, names: list[str]) -> frozenset[str]:
        """The names kept under the max_modules cap (spread over the model's depth), computed once per model."""
        key = tuple(names)
        cached = self._picked.get(kind)
        if cached is None or cached[0] != key:
            cached = (key, frozenset(spread_select(names, self.max_modules, set())))
            self._picked[kind] = cached
        return cached[1]

    def _id(self, kind: str, name: str, fn: str | None) -> int:
        i = self._ids.get((kind, name))
        if i is None:
            i = self._conn.execute("INSERT INTO series (kind, name, fn) VALUES (?,?,?)", (kind, name, fn)).lastrowid
            self._ids[(kind, name)] = i
        return i


__all__ = ["HistoryWriter", "HistoryError", "open_history", "read_meta", "check_file", "SCHEMA_VERSION",
           "RECENT_SAMPLES", "thin_ranges", "kept"]

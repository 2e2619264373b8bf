"""agent.export.history: what a training run records, the thinning bound, the writer thread, bad files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

import agent
from agent.checks.findings import Finding
from agent.export.history import SCHEMA_VERSION, HistoryError, HistoryWriter, kept, thin_ranges
from agent.export.sink import MAX_FAILURES, SnapshotSink
from agent.guard import Guard
from agent.ops.report import read_history
from agent.snapshot import ActivationStats, LayerStats, MemoryStats, Snapshot


def snap(step: int, layers: int = 3, loss: float | None = None) -> Snapshot:
    return Snapshot(
        step=step, time=1000.0 + step, loss=loss if loss is not None else 1.0 / (step + 1), val_loss=0.5,
        learning_rates=(0.1, 0.01),
        layers=tuple(LayerStats(f"l{i}", 10, grad_norm=0.1 * (i + 1) + step, weight_norm=2.0, update_norm=0.002,
                                grad_nonfinite=0, weight_nonfinite=0, params_without_grad=0) for i in range(layers)),
        activations=(ActivationStats("relu1", "relu", 8, dead_ratio=0.25, saturated_ratio=None, nonfinite=0),
                     ActivationStats("tanh1", "tanh", 8, dead_ratio=None, saturated_ratio=0.75, nonfinite=0)),
        memory=MemoryStats(host_rss=2.0**30))


FINDING = Finding("dead_units", "warning", "relu1", 4, "activation relu1: 75% dead", value=0.75)


def rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_thin_ranges_keep_what_kept_says_and_the_count_grows_with_the_log_of_the_run():
    recent = 8
    alive: set[int] = set()
    for n in range(3000):
        alive.add(n)
        if (n + 1) % recent == 0:
            for first, last, mod in thin_ranges(n, recent):
                alive -= {s for s in range(first, last + 1) if s % mod}
        assert alive == {s for s in range(n + 1) if kept(s, n, recent)}, n
    assert 0 in alive and 2999 in alive
    assert len(alive) <= recent * (2 + (3000 // recent).bit_length())


def test_writer_records_every_value_and_finding(tmp_path):
    path = tmp_path / "h.sqlite"
    w = HistoryWriter(path)
    for step in range(0, 50, 10):
        w.record(snap(step))
    w.finding("firing", FINDING, FINDING.step, also=("relu2",))
    w.finding("resolved", FINDING, 40)
    assert w.flush(10)
    w.close()
    assert w.written == 7 and w.dropped == 0
    assert rows(path, "SELECT step, loss, val_loss, lrs, host_rss FROM samples ORDER BY seq")[1] == (
        10, pytest.approx(1 / 11), 0.5, "0.1,0.01", 2.0**30)
    s = snap(20)
    assert rows(path, "SELECT grad_norm, weight_norm, update_ratio FROM samples WHERE step = 20")[0] == pytest.approx(
        (s.grad_norm, s.weight_norm, s.update_ratio))
    got = rows(path, "SELECT s.name, l.grad_norm, l.update_ratio FROM layers l JOIN series s USING (id) "
                     "JOIN samples USING (seq) WHERE step = 20 ORDER BY s.name")
    assert got == [(f"l{i}", pytest.approx(0.1 * (i + 1) + 20), pytest.approx(0.001)) for i in range(3)]
    assert rows(path, "SELECT s.name, s.fn, a.dead, a.saturated FROM activations a JOIN series s USING (id) "
                      "WHERE seq = 0 ORDER BY s.name") == [("relu1", "relu", 0.25, None), ("tanh1", "tanh", None, 0.75)]
    assert rows(path, "SELECT step, since, status, check_name, module, also, message FROM findings ORDER BY id") == [
        (4, 4, "firing", "dead_units", "relu1", "relu2", "activation relu1: 75% dead"),
        (40, 4, "resolved", "dead_units", "relu1", None, "activation relu1: 75% dead")]
    assert rows(path, "PRAGMA journal_mode") == [("delete",)]  # one self-contained file after close
    assert dict(rows(path, "SELECT key, value FROM meta"))["schema_version"] == str(SCHEMA_VERSION)


def test_history_is_thinned_but_keeps_every_finding_and_the_newest_samples(tmp_path):
    path, recent, n = tmp_path / "h.sqlite", 16, 1000
    w = HistoryWriter(path, recent=recent)
    for seq in range(n):
        w.record(snap(seq * 10, layers=2))
        if seq % 100 == 0:
            w.finding("firing", FINDING, seq * 10)
    w.close(timeout=30)
    assert w.dropped == 0
    seqs = [s for (s,) in rows(path, "SELECT step / 10 FROM samples ORDER BY seq")]
    assert seqs == [s for s in range(n) if kept(s, n - 1, recent)]
    assert seqs[-recent:] == list(range(n - recent, n))  # the newest at full resolution
    assert len(seqs) < n / 5
    assert rows(path, "SELECT count(DISTINCT seq) FROM layers") == [(len(seqs),)]  # per-layer rows thinned alike
    assert rows(path, "SELECT count(*) FROM findings") == [(10,)]


def test_an_existing_history_is_continued(tmp_path):
    path = tmp_path / "h.sqlite"
    for start in (0, 100):
        w = HistoryWriter(path)
        w.record(snap(start))
        w.close()
    assert rows(path, "SELECT seq, step FROM samples ORDER BY seq") == [(0, 0), (1, 100)]


def test_max_modules_caps_the_layers_recorded(tmp_path):
    path = tmp_path / "h.sqlite"
    w = HistoryWriter(path, max_modules=4)
    w.record(snap(0, layers=10))
    w.close()
    names = [n for (n,) in rows(path, "SELECT name FROM series WHERE kind = 'layer' ORDER BY id")]
    assert len(names) == 4 and names[0] == "l0" and names[-1] == "l9"  # spread over the depth


@pytest.mark.parametrize("bad", ["text", "version", "truncated", "corrupt"])
def test_a_file_that_is_not_a_history_of_this_version_is_refused(tmp_path, bad):
    path = tmp_path / "h.sqlite"
    if bad == "text":
        path.write_text("loss,step\n1,2\n" * 20)
    else:
        w = HistoryWriter(path)
        for step in range(2000):
            w.record(snap(step, layers=5))
        w.close(timeout=30)
        if bad == "version":
            rows(path, "SELECT 1")
            conn = sqlite3.connect(path)
            conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
            conn.commit()
            conn.close()
        elif bad == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:  # every page after the first two overwritten at its start
            data = bytearray(path.read_bytes())
            for at in range(8192, len(data), 4096):
                data[at:at + 200] = b"\xff" * 200
            path.write_bytes(bytes(data))
    with pytest.raises(HistoryError) as exc:
        read_history(path)
    assert {"text": "not an nnwatch history", "version": "schema version 999", "truncated": "is truncated",
            "corrupt": "is damaged"}[bad] in str(exc.value)
    res = subprocess.run([sys.executable, "-m", "agent.cli", "report", str(path), "-o", str(tmp_path / "r.html")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnwatch report: ") and str(path) in lines[0], res.stderr
    assert not (tmp_path / "r.html").exists()


def test_attach_refuses_a_history_of_another_version_before_hooking_anything(tmp_path):
    path = tmp_path / "h.sqlite"
    HistoryWriter(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="schema version 0"):
        agent.attach(model, port=None, history=str(path))
    assert not model._forward_hooks and not model._forward_pre_hooks
    with pytest.raises(ValueError, match="is a folder"):
        agent.attach(model, port=None, history=str(tmp_path))
    with pytest.raises(TypeError, match="history must be a file system path"):
        agent.attach(model, port=None, history=5)
    with pytest.raises(ValueError, match="not an nnwatch history"):
        (tmp_path / "notes.txt").write_text("not a database, but the user's notes\n" * 10)
        agent.attach(model, port=None, history=str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text().startswith("not a database")  # left alone
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_a_training_run_records_each_sampled_step_and_its_findings(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit of the ReLU dead
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "run.sqlite"
    mon = agent.attach(model, opt, port=None, native=False, sample_every=2, history=str(path))
    for _ in range(40):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    assert mon.flush(10)
    assert rows(path, "SELECT count(*) FROM samples") == [(mon.sampled_steps,)]  # readable while training
    written, failed, dropped = mon.delivery_counts()["history"]
    assert written >= mon.sampled_steps and (failed, dropped) == (0, 0)
    last = mon.snapshot
    mon.close()
    assert rows(path, "SELECT step, loss FROM samples ORDER BY seq DESC LIMIT 1") == [(last.step, pytest.approx(last.loss))]
    assert ("dead_units", "1") in rows(path, "SELECT check_name, module FROM findings WHERE status = 'firing'")
    assert rows(path, "SELECT dead FROM activations a JOIN series s USING (id) ORDER BY seq DESC LIMIT 1") == [(1.0,)]


class Blocking(SnapshotSink):
    probe = "blocking"

    def __init__(self, **kw) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__(**kw)

    def write(self, batch) -> None:
        self.entered.set()
        self.release.wait(30)


def test_a_stuck_writer_never_blocks_training_and_close_gives_up():
    sink = Blocking(max_queue=4)
    sink.put("first")
    assert sink.entered.wait(10)
    for k in range(10):
        sink.put(k)  # 4 fit in the queue, the rest are dropped at once
    assert sink.dropped == 6
    sink.close(timeout=0.2)
    assert sink.thread.is_alive()  # still inside write(): close() returned anyway
    sink.release.set()
    sink.thread.join(10)
    assert not sink.thread.is_alive()
    assert sink.dropped == 10 and sink.written == 1  # what close() could not wait for counts as dropped


class Failing(SnapshotSink):
    probe = "failing"

    def write(self, batch) -> None:
        raise OSError("disk full")


def test_a_failing_writer_is_counted_logged_once_and_stops(caplog):
    guard = Guard()
    sink = Failing(guard)
    for k in range(MAX_FAILURES + 2):
        sink.put(k)
        sink.flush(10)
    sink.close()
    assert guard.errors["failing"] == MAX_FAILURES and sink.failed
    assert sink.written == 0 and sink.dropped == MAX_FAILURES + 2
    assert sum("probe 'failing' failed;" in r.getMessage() for r in caplog.records) == 1

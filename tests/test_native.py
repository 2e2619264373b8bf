"""The optional C++ CPU kernels (agent.collect.native): same numbers as torch, one call per list, safe fallbacks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import agent
from agent.collect import native, stats

from .helpers import require_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ops():
    require_binary("c++")
    st = native.build()
    assert st.state == "ready", f"native kernels {st.state}: {st.reason}"
    return native.kernels()


def _mixed_tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(), (0,), (1,), (7,), (1023,), (1024,), (1025,), (33, 17), (2**15,), (2**15 + 3,), (3, 2**16 + 5), (64, 3, 3, 3)]
    return [torch.randn(s, generator=g) * (10.0 ** (k % 5 - 2)) for k, s in enumerate(shapes)]


def _ref(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.double().pow(2).sum() for t in ts]).float()


def test_sum_squares_match_a_float64_reference(ops):
    ts = _mixed_tensors()
    got = ops.sum_squares(ts)
    assert got.dtype == torch.float32 and got.shape == (len(ts),)
    torch.testing.assert_close(got, _ref(ts), rtol=2e-6, atol=0.0)


def test_results_do_not_depend_on_the_thread_count(ops):
    ts = _mixed_tensors() + [torch.randn(2**20)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.sum_squares(ts)
        torch.set_num_threads(2)
        two = ops.sum_squares(ts)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # blocks are summed in a fixed order


def test_update_sums_match_the_reference_and_leave_inputs_alone(ops):
    new = _mixed_tensors()
    old = [t + 0.01 * torch.randn_like(t) for t in new]
    saved = [t.clone() for t in old]
    both = ops.update_sums(new, old)
    assert both.shape == (2, len(new))
    torch.testing.assert_close(both[0], _ref([a - b for a, b in zip(new, old)]), rtol=1e-5, atol=0.0)
    torch.testing.assert_close(both[1], _ref(new), rtol=2e-6, atol=0.0)
    assert all(torch.equal(a, b) for a, b in zip(old, saved))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_propagate(ops, bad):
    t = torch.randn(5000)
    t[4321] = bad
    assert not math.isfinite(float(ops.sum_squares([torch.ones(3), t])[1]))
    assert not math.isfinite(float(ops.update_sums([t], [torch.zeros(5000)])[0, 0]))


@pytest.mark.parametrize("odd", ["float64", "non_contiguous", "sparse", "bfloat16"])
def test_lists_the_kernels_do_not_take_fall_back_to_torch_ops(ops, odd):
    base = [torch.randn(40, 30), torch.randn(7)]
    t = {"float64": torch.randn(20, dtype=torch.float64), "non_contiguous": torch.randn(30, 40)[:, ::2],
         "sparse": torch.randn(6, 6).relu().to_sparse(), "bfloat16": torch.randn(20).bfloat16()}[odd]
    ts = base + [t]
    with pytest.raises((RuntimeError, NotImplementedError)):
        ops.sum_squares(ts)
    got = stats.squared_norm_vector(ts)
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.stack(stats.squared_norms(ts)), rtol=0.0, atol=0.0)


def test_dense_tensors_in_any_dimension_order_are_read_as_they_lie(ops):
    w = torch.randn(8, 6, 5, 5)
    ts = [w.to(memory_format=torch.channels_last), torch.randn(300, 40).t(), torch.randn(7)]
    torch.testing.assert_close(ops.sum_squares(ts), _ref(ts), rtol=2e-6, atol=0.0)
    old = [t.clone() * 0.5 for t in ts]  # clone keeps the strides: the elements pair up
    torch.testing.assert_close(ops.update_sums(ts, old)[0], _ref([a - b for a, b in zip(ts, old)]), rtol=2e-6, atol=0.0)
    with pytest.raises(RuntimeError, match="strides"):  # same shape, other order: elements would not pair up
        ops.update_sums([ts[1]], [ts[1].contiguous()])
    u, _ = stats.update_squared_norm_vectors([ts[1]], [ts[1].contiguous() * 0.5])  # falls back, still right
    torch.testing.assert_close(u, _ref([ts[1] * 0.5]), rtol=2e-5, atol=0.0)


def test_vectors_agree_with_and_without_the_kernels(ops, monkeypatch):
    ts = _mixed_tensors()
    old = [t * 0.99 for t in ts]
    fast = stats.squared_norm_vector(ts)
    fast_u, fast_w = stats.update_squared_norm_vectors(ts, old)
    monkeypatch.setattr(native, "kernels", lambda: None)
    slow = stats.squared_norm_vector(ts)
    slow_u, slow_w = stats.update_squared_norm_vectors(ts, [t.clone() for t in old], overwrite_old=True)
    torch.testing.assert_close(fast, slow, rtol=2e-5, atol=1e-30)
    torch.testing.assert_close(fast_u, slow_u, rtol=2e-5, atol=1e-30)
    torch.testing.assert_close(fast_w, slow_w, rtol=2e-5, atol=1e-30)
    assert stats.squared_norm_vector([]).shape == (0,)


def test_monitor_reports_the_true_norms_through_the_kernels(ops):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1, overhead_budget=None)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    mon.close()
    layer = {ls.module: ls for ls in mon.snapshot.layers}["0"]
    want_g = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads[:2]))
    want_w = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in list(model.parameters())[:2]))
    want_u = math.sqrt(sum(float((p.detach().double() - b.double()).pow(2).sum())
                           for p, b in zip(list(model.parameters())[:2], before[:2])))
    assert layer.grad_norm == pytest.approx(want_g, rel=1e-5)
    assert layer.weight_norm == pytest.approx(want_w, rel=1e-5)
    assert layer.update_norm == pytest.approx(want_u, rel=1e-4)


def _run(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_STATUS = """
    import json
    from agent.collect import native
    st = native.build()
    print(json.dumps({"state": st.state, "reason": st.reason, "built": st.build_seconds,
                      "path": str(st.path) if st.path else None}))
"""


def test_a_cold_cache_is_built_once_by_concurrent_processes(tmp_path):
    require_binary("c++")
    env = {**os.environ, "NNWATCH_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_STATUS)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["state"] for r in results] == ["ready", "ready"], results
    assert sum(r["built"] is not None for r in results) == 1, results  # one compiler run; the other waited
    assert results[0]["path"] == results[1]["path"]
    assert Path(results[0]["path"]).parent == tmp_path / "native"
    assert not list((tmp_path / "native").glob("*.tmp.so"))  # built atomically, nothing left behind
    again = _run(_STATUS, {"NNWATCH_CACHE_DIR": str(tmp_path)})
    assert again["state"] == "ready" and again["built"] is None  # from the cache


def test_the_cache_key_follows_the_source(tmp_path, monkeypatch):
    cxx = require_binary("c++")
    first = native.library_path(cxx)
    src = tmp_path / "kernels.cpp"
    src.write_text(native.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native, "SOURCE", src)
    assert native.library_path(cxx) != first


@pytest.mark.parametrize("env, state, reason", [
    ({"CXX": "/nonexistent/c++"}, "unavailable", "no C++ compiler"),
    ({"CXX": "false"}, "unavailable", "failed"),
    ({"NNWATCH_NATIVE": "0"}, "idle", ""),  # Options.native from the environment: nothing is started
])
def test_without_kernels_the_agent_says_why_and_still_measures(tmp_path, env, state, reason):
    code = """
        import json, logging, torch, agent
        from agent.collect import native
        logging.basicConfig(level=logging.INFO)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = agent.attach(model, opt, port=None, sample_every=1, overhead_budget=None)
        st = native.wait(60)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 0, 1])).backward()
            opt.step()
        mon.close()
        norms = [ls.grad_norm for ls in mon.snapshot.layers]
        print(json.dumps({"state": st.state, "reason": st.reason, "norms": norms}))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "NNWATCH_CACHE_DIR": str(tmp_path), **env}, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["state"] == state and reason in out["reason"], out
    assert out["norms"] and all(n is not None and n > 0 for n in out["norms"])
    if state == "idle":
        assert not (tmp_path / "native").exists()
    if state == "unavailable":  # one line in the job's log says what happened and what it costs
        lines = [l for l in proc.stderr.splitlines() if "native CPU kernels" in l]
        assert len(lines) == 1 and "torch ops" in lines[0], proc.stderr


def test_gpu_models_do_not_build_anything(tmp_path):
    code = """
        import json, torch, agent
        from agent.collect import native
        model = torch.nn.Linear(4, 4).to("meta")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = agent.attach(model, opt, port=None)
        mon.close()
        print(json.dumps({"state": native.status().state}))
    """
    out = _run(code, {"NNWATCH_CACHE_DIR": str(tmp_path)})
    assert out["state"] == "idle"
    assert not (tmp_path / "native").exists()


def test_build_honours_the_environment_switch(tmp_path):
    out = _run(_STATUS, {"NNWATCH_CACHE_DIR": str(tmp_path), "NNWATCH_NATIVE": "off"})
    assert out["state"] == "disabled" and "NNWATCH_NATIVE" in out["reason"]


def test_cli_builds_and_reports(tmp_path):
    require_binary("c++")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "native"], capture_output=True, text=True,
                          env={**os.environ, "NNWATCH_CACHE_DIR": str(tmp_path)}, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "native kernels ready" in proc.stdout and str(tmp_path) in proc.stdout


def test_device_groups_keep_each_device_apart():
    cpu, meta = torch.ones(3), torch.ones(3, device="meta")
    assert stats.device_groups([]) == []
    assert stats.device_groups([cpu, cpu]) == [[0, 1]]
    assert stats.device_groups([cpu, meta, cpu, meta]) == [[0, 2], [1, 3]]


_FAKE_CXX = """#!/bin/sh
# A compiler that writes part of its output and then hangs (a build interrupted midway), or finishes.
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
echo "$out" >> "$MARK"
printf 'partial' > "$out"
[ -n "$HANG" ] && sleep 120
exit 0
"""


def _fake_compiler(tmp_path: Path) -> Path:
    cxx = tmp_path / "fake-c++"
    cxx.write_text(_FAKE_CXX)
    cxx.chmod(0o755)
    return cxx


def test_a_build_interrupted_midway_leaves_no_library_in_the_cache(tmp_path, monkeypatch):
    import signal
    import time

    cxx, mark = _fake_compiler(tmp_path), tmp_path / "mark"
    env = {**os.environ, "NNWATCH_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(cxx), "MARK": str(mark), "HANG": "1"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_STATUS)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert mark.exists(), "the compiler never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its compiler die mid-build
        proc.wait(timeout=30)
    monkeypatch.setenv("NNWATCH_CACHE_DIR", str(tmp_path / "cache"))
    library = native.library_path(str(cxx))
    assert not library.exists()  # only a temporary file, never the cached name
    # The next run compiles again (here the fake compiler finishes; its output is not a loadable library).
    out = _run(_STATUS, {**env, "HANG": ""})
    assert len(mark.read_text().splitlines()) == 2 and out["state"] == "unavailable"


def test_an_empty_library_in_the_cache_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    cxx, mark = _fake_compiler(tmp_path), tmp_path / "mark"
    monkeypatch.setenv("NNWATCH_CACHE_DIR", str(tmp_path / "cache"))
    library = native.library_path(str(cxx))
    library.parent.mkdir(parents=True)
    library.write_bytes(b"")  # what an older version left when the job ended mid-build
    out = _run(_STATUS, {"NNWATCH_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(cxx), "MARK": str(mark), "HANG": ""})
    assert mark.exists(), "the empty file was taken for a built library"
    assert library.read_bytes() == b"partial"  # replaced by the new build (which, being fake, does not load)
    assert out["state"] == "unavailable"

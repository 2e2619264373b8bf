"""The fast kernels give the same numbers as the obvious (slower) ones they replaced.

Each fast path is compared with a plain reference on the same inputs: float32/float64/float16/bfloat16,
NaN, +-inf, empty, non-contiguous and large tensors; activation statistics through a real monitor.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agent
from agent.collect import stats
from agent.collect.transfer import DeviceBatch
from agent.collect.updates import WeightCopies

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _poisoned(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    flat = t.view(-1)
    if flat.numel() >= 8:
        idx = torch.randperm(flat.numel(), generator=g)[:7]
        flat[idx[:3]] = math.nan
        flat[idx[3:5]] = math.inf
        flat[idx[5:]] = -math.inf
    return t.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 5), (3, 4, 5, 6), (70_000,)])
def test_nonfinite_count_equals_boolean_count(dtype, shape):
    t = _poisoned(shape, dtype, seed=sum(shape))
    ref = t.numel() - int(torch.isfinite(t).sum())
    got = stats.nonfinite_count(t)
    assert got.dtype == torch.int64 and got.ndim == 0
    assert int(got) == ref
    if t.is_floating_point():
        assert float(stats.nonfinite_float_count(t)) == ref  # the probe's per-call variant
    assert int(stats.nonfinite_count(t.t() if t.ndim == 2 else t)) == ref  # non-contiguous view


def test_nonfinite_count_of_huge_finite_values_and_subnormals():
    t = torch.tensor([3.0e38, -3.0e38, 1e-45, -0.0, 0.0])
    assert int(stats.nonfinite_count(t)) == 0  # x * 0 is 0 for every finite value, however large
    h = torch.tensor([65504.0, -65504.0, 6e-8], dtype=torch.float16)
    assert int(stats.nonfinite_count(h)) == 0


def test_nonfinite_count_is_exact_beyond_float32_integers():
    n = 2**24 + 3
    t = torch.zeros(n)
    t[::4_000_000] = math.nan
    assert int(stats.nonfinite_count(t)) == int((~torch.isfinite(t)).sum())


@pytest.mark.parametrize("dtype", DTYPES)
def test_squared_norms_dot_path_equals_foreach_norm(dtype):
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(s, generator=g).to(dtype) for s in [(1,), (17,), (64, 33), (5, 6, 7), (100_000,)]]
    tensors.append(torch.randn(30, 40, generator=g).to(dtype).t())  # non-contiguous
    got = stats.squared_norms(tensors)
    ref = [torch.linalg.vector_norm(t.double()) ** 2 for t in tensors]
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    for s, r in zip(got, ref):
        assert s.dtype == torch.float32 and s.ndim == 0
        assert float(s) == pytest.approx(float(r), rel=tol)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_squared_norms_non_finite_matches_reference(bad):
    t = torch.ones(1000)
    t[10] = bad
    assert not math.isfinite(float(stats.squared_norms([t])[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_in_place_difference_equals_allocating_difference(dtype):
    g = torch.Generator().manual_seed(4)
    new = [torch.randn(s, generator=g).to(dtype) for s in [(9,), (40, 20), (3, 3, 3)]]
    old = [n + 1e-2 * torch.randn(n.shape, generator=g).to(dtype) for n in new]
    ref = [float(((a.double() - b.double()) ** 2).sum()) for a, b in zip(new, old)]
    plain = stats.difference_squared_norms(new, old)
    scratch = [o.clone() for o in old]
    fast = stats.difference_squared_norms(new, scratch, overwrite_old=True)
    tol = 1e-5 if dtype != torch.bfloat16 else 2e-2
    for p, f, r in zip(plain, fast, ref):
        assert float(p) == pytest.approx(r, rel=tol)
        assert float(f) == float(p)  # same kernel on the same numbers
    assert all(torch.equal(o, o) for o in old)  # the caller's tensors are untouched without overwrite_old


def test_weight_copies_reuse_cpu_buffers_and_free_unused_ones():
    copies = WeightCopies()
    a, b = torch.randn(10, 10), torch.randn(5)
    first = copies.copy([a, b])
    assert [torch.equal(c, t) for c, t in zip(first, [a, b])] == [True, True]
    ptrs = [c.data_ptr() for c in first]
    a.add_(1.0)
    second = copies.copy([a, b])
    assert [c.data_ptr() for c in second] == ptrs  # refilled in place: no new allocation
    assert torch.equal(second[0], a)
    assert copies.kept_bytes == (100 + 5) * 4
    copies.copy([b])  # a layer no longer measured: its buffer is released
    assert copies.kept_bytes == 5 * 4
    copies.clear()
    assert copies.kept_bytes == 0


def test_weight_copies_keep_the_strides_of_their_sources():
    copies = WeightCopies()
    cl = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    t = torch.randn(6, 8).t()
    got = copies.copy([cl, t, torch.randn(3, 3)[:, ::2]])
    assert got[0].stride() == cl.stride() and got[1].stride() == t.stride()  # elements pair up in memory
    assert got[2].is_contiguous()  # a non-dense source gets a dense copy
    assert all(torch.equal(c, s) for c, s in zip(got[:2], [cl, t]))
    again = copies.copy([cl.contiguous()])  # same shape, other strides: not the kept channels-last buffer
    assert again[0].is_contiguous() and again[0].data_ptr() != got[0].data_ptr()


def test_device_batch_stacked_fetch_matches_per_value_reads():
    values = {("f32", 0): torch.tensor(1.5), ("f64", 1): torch.tensor(2.25, dtype=torch.float64),
              ("i64", 2): torch.tensor(7), ("vec", 3): torch.tensor([1.0, 2.0, 3.0]), ("bool", 4): torch.tensor(True),
              ("py", 5): 4.0, ("f32", 6): torch.tensor(-0.5), ("nan", 7): torch.tensor(math.nan)}
    batch = DeviceBatch()
    for k, v in values.items():
        batch.add(k, v)
    host = batch.fetch()
    for k, v in values.items():
        want = v.tolist() if isinstance(v, torch.Tensor) else v
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(host[k])
        else:
            assert host[k] == want, k


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(12, 12)
        self.c = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        h = torch.tanh(self.b(h)) + torch.sigmoid(self.b(h))
        return self.c(h)


def _probe(x: torch.Tensor) -> tuple[dict, nn.Module]:
    torch.manual_seed(0)
    model = _Mixed()
    with torch.no_grad():
        model.a.bias[:4] = -100.0  # four dead units
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: every forward is the same
    mon = agent.attach(model, opt, port=None, sample_every=1, dead_window=2, log_findings=False)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    acts = {a.key: a for a in mon.snapshot.activations}
    mon.close()
    return acts, model


def test_probe_dead_and_saturation_equal_a_reference_computation(monkeypatch):
    monkeypatch.setattr("agent.collect.sites.DEAD_MIN_ROWS", 32)  # the kernels on one batch, not the window policy
    x = 3 * torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    acts, model = _probe(x)
    with torch.no_grad():
        r = F.relu(model.a(x))
        t = torch.tanh(model.b(r))
        s = torch.sigmoid(model.b(r))
    dead_ref = float(((r > 0).sum(0) == 0).double().mean())  # the boolean reduction the kernel avoids
    assert dead_ref >= 4 / 12
    assert acts["(root):relu"].dead_ratio == pytest.approx(dead_ref)
    assert acts["(root):tanh"].saturated_ratio == pytest.approx(float((t.abs() > 0.97).double().mean()))
    assert acts["(root):sigmoid"].saturated_ratio == pytest.approx(float(((s - 0.5).abs() > 0.47).double().mean()))
    assert all(a.nonfinite == 0 for a in acts.values())


def test_probe_non_finite_counts_equal_a_reference_computation():
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    x[0, 0] = math.nan  # one poisoned row
    x[1, 1] = math.inf
    acts, model = _probe(x)
    with torch.no_grad():
        r = F.relu(model.a(x))
        t = torch.tanh(model.b(r))
        s = torch.sigmoid(model.b(r))
    for key, ref in (("(root):relu", r), ("(root):tanh", t), ("(root):sigmoid", s)):
        assert acts[key].nonfinite == int((~torch.isfinite(ref)).sum()) > 0, key


@pytest.mark.parametrize("overwrite_old", [False, True])
def test_fused_update_norms_equal_subtract_then_norm(overwrite_old):
    g = torch.Generator().manual_seed(5)
    # The last spans the chunked path (above _FUSE_MIN): several chunks plus a tail.
    shapes = [(1,), (0,), (33, 17), (stats._FUSE_MIN + 2 * stats._CHUNK + 5,)]
    new = [torch.randn(s, generator=g) for s in shapes]
    new += [torch.randn(40, 30, generator=g).t(), torch.randn(6, dtype=torch.float64, generator=g),
            torch.randn(9, generator=g).to(torch.bfloat16)]  # non-contiguous, float64, the generic path
    old = [n + 1e-3 * torch.randn(n.shape, generator=g).to(n.dtype) for n in new]
    before = [o.clone() for o in old]
    upd, wsq = stats.update_squared_norms(new, old, overwrite_old=overwrite_old)
    for n, o, u, w in zip(new, before, upd, wsq):
        assert u.dtype == w.dtype == torch.float32 and u.ndim == w.ndim == 0
        ref_u = float(((n.double() - o.double()) ** 2).sum())
        ref_w = float((n.double() ** 2).sum())
        tol = 2e-2 if n.dtype == torch.bfloat16 else 1e-5
        assert float(u) == pytest.approx(ref_u, rel=tol, abs=1e-12)
        assert float(w) == pytest.approx(ref_w, rel=tol, abs=1e-12)
    if not overwrite_old:
        assert all(torch.equal(o, b) for o, b in zip(old, before))  # inputs untouched
    bad = torch.ones(stats._FUSE_MIN + 10)
    bad[3] = math.nan
    u, w = stats.update_squared_norms([bad, bad[:10]], [torch.ones(stats._FUSE_MIN + 10), torch.ones(10)],
                                      overwrite_old=overwrite_old)
    assert all(math.isnan(float(v)) for v in (*u, *w))


@pytest.mark.parametrize("act", [F.relu, F.leaky_relu, torch.tanh])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_activation_non_finite_detected_at_once_and_counted_exactly_from_the_next_sample(act, bad):
    torch.manual_seed(0)
    lin = nn.Linear(4, 8)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return act(self.lin(x))

    model = M()
    mon = agent.attach(model, None, port=None, sample_every=1, log_findings=False)  # no updates: weights stay finite
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = act(lin(x))
    assert int((~torch.isfinite(ref)).sum()) == 0
    counts = []
    for step in range(4):
        xb = x.clone()
        if step in (1, 2):
            xb[3, :] = bad  # a poisoned row on two consecutive samples
        model(xb).sum().backward()
        model.zero_grad(set_to_none=True)
        mon.step()
        with torch.no_grad():
            exact = int((~torch.isfinite(act(lin(xb)))).sum())
        counts.append((mon.snapshot.nonfinite("activation"), exact))
    (c0, e0), (c1, e1), (c2, e2), (c3, e3) = counts
    assert c0 == e0 == 0 and c3 == e3 == 0
    assert e1 > 0 and e1 == e2
    assert 1 <= c1 <= e1  # first sample that goes non-finite: detected, a lower bound
    assert c2 == e2  # from the next sample on: exact
    mon.close()

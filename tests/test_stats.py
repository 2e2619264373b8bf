"""Kernels against a float64 reference, including NaN/inf/empty and low-precision inputs."""

from __future__ import annotations

import math

import pytest
import torch

from agent.collect import stats


def ref_sq(t: torch.Tensor) -> float:
    return float((t.detach().double() ** 2).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_squared_norms_match_float64_reference(dtype):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=g).to(dtype) for s in [(7,), (3, 5), (2, 3, 4), (1,)]]
    got = stats.squared_norms(tensors)
    for t, s in zip(tensors, got):
        assert s.dtype == torch.float32 and s.ndim == 0
        assert math.isclose(float(s), ref_sq(t), rel_tol=1e-5 if dtype in (torch.float32, torch.float64) else 1e-2)


def test_squared_norms_mixed_groups_keep_order_and_handle_empty():
    tensors = [torch.ones(4), torch.zeros(0), torch.full((2, 2), 2.0, dtype=torch.float64), torch.ones(3, dtype=torch.float16)]
    got = [float(s) for s in stats.squared_norms(tensors)]
    assert got == [4.0, 0.0, 16.0, 3.0]
    assert stats.squared_norms([]) == []


def test_squared_norms_non_contiguous():
    t = torch.arange(12.0).reshape(3, 4).t()
    assert float(stats.squared_norms([t])[0]) == ref_sq(t)


@pytest.mark.parametrize("odd", [None, "transposed", "channels_last", "float64", "sparse"])
def test_squared_norms_fast_path_matches_general_path(odd):
    # Under no_grad, a list of plain contiguous float32 CPU tensors takes the one-pass path; any other
    # tensor in the list sends all of them through the general loop. Both must give the same values.
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(6, 5)
    lin(torch.randn(3, 6, generator=g)).square().sum().backward()
    tensors = [lin.weight, lin.bias, lin.weight.grad, lin.bias.grad, torch.tensor(3.0), torch.zeros(0),
               torch.randn(2, 3, 4, 5, generator=g)]
    extra = {"transposed": lambda: torch.randn(4, 7, generator=g).t(),
             "channels_last": lambda: torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last),
             "float64": lambda: torch.randn(9, dtype=torch.float64, generator=g),
             "sparse": lambda: torch.randn(5, 4, generator=g).to_sparse()}
    if odd is not None:
        tensors.insert(3, extra[odd]())
    with torch.no_grad():
        fast = stats.squared_norms(tensors)
        assert (stats._cpu_float32_dots(tensors) is None) == (odd is not None)  # which path ran
    general = stats.squared_norms(tensors)  # grad enabled: the general loop (detaches first)
    assert len(fast) == len(tensors)
    for t, a, b in zip(tensors, fast, general):
        assert a.dtype == torch.float32 and a.ndim == 0 and not a.requires_grad
        assert float(a) == float(b)
        assert math.isclose(float(a), ref_sq(t.to_dense() if t.is_sparse else t), rel_tol=1e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_squared_norms_propagate_nonfinite(bad):
    t = torch.ones(5)
    t[2] = bad
    assert not math.isfinite(float(stats.squared_norms([t])[0]))


def test_nonfinite_count():
    t = torch.tensor([1.0, math.nan, math.inf, -math.inf, 0.0])
    assert int(stats.nonfinite_count(t)) == 3
    assert int(stats.nonfinite_count(torch.zeros(0))) == 0
    assert int(stats.nonfinite_count(torch.arange(3))) == 0  # integer tensors are always finite
    assert int(stats.nonfinite_count(torch.tensor([math.nan], dtype=torch.bfloat16))) == 1


def test_difference_squared_norms():
    new = [torch.tensor([1.0, 2.0]), torch.ones(2, 2)]
    old = [torch.tensor([0.0, 0.0]), torch.zeros(2, 2)]
    assert [float(x) for x in stats.difference_squared_norms(new, old)] == [5.0, 4.0]
    assert stats.difference_squared_norms([], []) == []


@pytest.mark.parametrize("shape,units", [((8, 5), 5), ((4, 6, 5), 5), ((4, 3, 6, 6), 3), ((2, 3, 4, 4, 4), 3), ((7,), 7)])
def test_alive_units_shapes(shape, units):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    alive = stats.alive_units(x)
    assert alive.shape == (units,)
    axis = stats.unit_axis(x.ndim)
    expected = (x.double().movedim(axis, -1).reshape(-1, units) > 0).any(0) if x.ndim > 1 else x > 0
    assert torch.equal(alive, expected)


def test_alive_units_dead_columns_and_nan():
    x = torch.randn(16, 6).abs()
    x[:, 2] = -1.0
    x[:, 4] = math.nan
    alive = stats.alive_units(x)
    assert alive.tolist() == [True, True, False, True, False, True]


@pytest.mark.parametrize("center,half", [(0.0, 0.97), (0.5, 0.47)])
def test_saturated_count_matches_reference(center, half):
    g = torch.Generator().manual_seed(2)
    x = torch.tanh(3 * torch.randn(1000, generator=g)) if center == 0 else torch.sigmoid(4 * torch.randn(1000, generator=g))
    ref = int(((x.double() - center).abs() > half).sum())
    assert float(stats.saturated_count(x, center, half)) == pytest.approx(ref, abs=0.5)


def test_saturated_count_edge_cases():
    assert float(stats.saturated_count(torch.zeros(0), 0.0, 0.97)) == 0.0
    assert float(stats.saturated_count(torch.ones(10), 0.0, 0.97)) == 10.0
    assert float(stats.saturated_count(torch.tensor([math.nan, 1.0]), 0.0, 0.97)) == 1.5  # NaN counts half
    x = torch.tensor([0.99, -0.99, 0.5], dtype=torch.bfloat16)
    assert float(stats.saturated_count(x, 0.0, 0.97)) == 2.0


def test_kernels_do_not_modify_inputs():
    x = torch.randn(10, 4)
    before = x.clone()
    stats.squared_norms([x]); stats.saturated_count(x, 0.5, 0.47); stats.alive_units(x); stats.nonfinite_count(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("shape", [(5, 3, 2, 2), (5, 3, 7, 7), (5, 3, 8, 8), (2, 4, 16, 16), (3, 2, 2, 2, 2), (6, 4), (2, 3, 4)])
def test_unit_peaks_match_one_reduction_over_all_but_the_unit_axis(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    x.view(-1)[7] = math.nan
    dims = stats.unit_dims(x.ndim)
    ref = x.double().amax(dim=dims)
    got = stats.unit_peaks(x)
    assert got.shape == ref.shape
    assert torch.equal(got.double().isnan(), ref.isnan())
    assert torch.equal(got.double().nan_to_num(0), ref.nan_to_num(0))

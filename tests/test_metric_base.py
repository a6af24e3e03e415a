"""The Metric protocol: validation, 1-vs-N broadcasting, gradients, and the embedding metric's arithmetic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robustsim import hub
from robustsim.errors import InputError
from robustsim.metrics.base import Metric, broadcast_pair
from robustsim.metrics.embedding import EmbeddingMetric, cosine_distance_from_unit


def tiny(input_size=(16, 16), **kw) -> EmbeddingMetric:
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 6, 3, stride=2),
                              torch.nn.AdaptiveAvgPool2d(2))
    return EmbeddingMetric(enc, input_size=input_size, **kw).eval()


class L2(Metric):
    """A metric without an embedding (mean squared difference)."""

    def distance(self, x, y):
        return (x - y).pow(2).flatten(1).mean(1)


def test_broadcast_one_against_many():
    m = tiny()
    x, y = torch.rand(1, 3, 16, 16), torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        d = m(x, y)
        assert d.shape == (5,)
        torch.testing.assert_close(d, m(x.expand(5, -1, -1, -1).clone(), y))
        torch.testing.assert_close(m(y, x), d)
        torch.testing.assert_close(d[2:3], m(x, y[2:3]))
    a, b = broadcast_pair(torch.zeros(3, 1), torch.zeros(1, 1))
    assert a.shape == b.shape == (3, 1)
    with pytest.raises(InputError, match=r"batch sizes differ: 2 vs 3 \(only 1-vs-N"):
        m(torch.rand(2, 3, 16, 16), torch.rand(3, 3, 16, 16))


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, 3, 8, 8), float("nan")), "contains NaN or Inf"),
    (torch.full((1, 3, 8, 8), float("inf")), "contains NaN or Inf"),
    (torch.full((1, 3, 8, 8), 1.01), r"values must lie in \[0, 1\], found \[1.01, 1.01\]"),
    (torch.full((1, 3, 8, 8), -1e-5), r"values must lie in \[0, 1\]"),
    (torch.rand(3, 8, 8), r"rank 4\), got rank 3"),
    (torch.rand(1, 1, 3, 8, 8), "got rank 5"),
    (torch.rand(1, 1, 8, 8), "expected 3 \\(RGB\\) channels, got 1"),
    (torch.rand(1, 4, 8, 8), "expected 3 \\(RGB\\) channels, got 4"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "floating tensor .*divide uint8 by 255"),
    (torch.rand(0, 3, 8, 8), "empty batch"),
    (np.zeros((1, 3, 8, 8), np.float32), "expected a torch.Tensor, got ndarray"),
])
@pytest.mark.parametrize("side", ["x", "y"])
def test_bad_tensors_are_refused_naming_the_problem(bad, match, side):
    m = tiny()
    good = torch.rand(1, 3, 8, 8)
    args = (bad, good) if side == "x" else (good, bad)
    with pytest.raises(InputError, match=f"^{side}: .*{match}") as e:
        m(*args)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_range_tolerance_and_no_silent_fixing():
    m = tiny()
    x = torch.rand(1, 3, 8, 8)
    edge = x.clone()
    edge[0, 0, 0, 0] = 1 + 5e-7  # rounding noise is allowed
    m(edge, x)
    assert float(edge[0, 0, 0, 0]) == pytest.approx(1 + 5e-7)  # and not clamped in place


def test_minimum_size_and_size_mismatch():
    m = tiny(min_size=8)
    with pytest.raises(InputError, match=r"x: image of 4×9 is smaller than the metric's minimum size 8×8"):
        m(torch.rand(1, 3, 4, 9), torch.rand(1, 3, 4, 9))
    with torch.no_grad():  # a native size: each input is resized, different sizes are fine
        assert m(torch.rand(1, 3, 12, 20), torch.rand(1, 3, 30, 10)).shape == (1,)
    free = tiny(input_size=None)
    with pytest.raises(InputError, match=r"image sizes differ: \(12, 20\) vs \(30, 10\)"):
        free(torch.rand(1, 3, 12, 20), torch.rand(1, 3, 30, 10))
    with pytest.raises(InputError, match=r"x: image of 8×8 is smaller than the metric's minimum size 9×9"):
        tiny(min_size=9).embed(torch.rand(1, 3, 8, 8))


def test_gradients_flow_to_both_inputs_and_are_correct():
    m = tiny(input_size=(8, 8), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)).double()
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    d = m(x, y)
    d.sum().backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    # analytic vs numerical gradients through resize, normalisation, encoder and the broadcast
    x0 = (0.2 + 0.6 * torch.rand(2, 3, 6, 5, dtype=torch.float64)).requires_grad_()
    y0 = (0.2 + 0.6 * torch.rand(1, 3, 6, 5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: m(a, b), (x0, y0), eps=1e-6, atol=1e-5)


def test_embedding_arithmetic():
    m = tiny()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        e = m.embed(x)
        f = m.features(x)
        d = m(x[:2], x[2:])
    assert e.shape == (4, 24)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(e, F.normalize(f, dim=1))
    cos = F.cosine_similarity(f[:2].double(), f[2:].double())
    torch.testing.assert_close(d.double(), 1 - cos, rtol=1e-5, atol=1e-6)
    centered = tiny(center=True)
    with torch.no_grad():
        ec = centered.embed(x)
    torch.testing.assert_close(ec, F.normalize(f - f.mean(1, keepdim=True), dim=1))
    with pytest.raises(ValueError, match="both mean and std"):
        tiny(mean=(0.5, 0.5, 0.5))


def test_difference_form_does_not_cancel():
    """Near-duplicates: 1 - <u, v> in float32 loses everything; ||u - v||²/2 keeps the digits."""
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(64, 512, dtype=torch.float64, generator=g), dim=1)
    v = F.normalize(u + 1e-5 * torch.randn(64, 512, dtype=torch.float64, generator=g), dim=1)
    exact = (u - v).pow(2).sum(1) / 2
    ours = cosine_distance_from_unit(u.float(), v.float()).double()
    naive = 1 - (u.float() * v.float()).sum(1).double()
    assert (ours >= 0).all()
    assert ((ours - exact).abs() / exact).max() < 1e-3
    assert ((naive - exact).abs() / exact).max() > 0.5  # the naive form is garbage here


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3))
def test_metric_axioms_hold(seed, n):
    m = tiny(input_size=(8, 8))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, 8, 8, generator=g), torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        dxy, dyx, dxx = m(x, y), m(y, x), m(x, x)
    assert (dxy >= 0).all() and (dxy <= 2 + 1e-6).all()
    torch.testing.assert_close(dxy, dyx)
    assert (dxx.abs() < 1e-6).all()


def test_metrics_without_embedding_or_config():
    m = L2()
    x, y = torch.rand(3, 3, 5, 5), torch.rand(1, 3, 5, 5)
    torch.testing.assert_close(m(x, y), (x - y).pow(2).flatten(1).mean(1))
    assert not m.has_embedding and tiny().has_embedding
    with pytest.raises(InputError, match="has no embedding"):
        m.embed(x)
    with pytest.raises(NotImplementedError, match="cannot be saved"):
        hub.save(m, "/tmp/never-written.safetensors")
    m.name = "l2"
    assert "name='l2', certified=False, input_size=None" in repr(m)

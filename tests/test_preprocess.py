"""Resizes as linear operators: the 1-D matrices reproduce F.interpolate, and the norm is the exact l2 norm."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robustsim.errors import InputError
from robustsim.preprocess import MODES, Resize, resize_matrix, resize_norm

SMOOTH = [("bicubic", False), ("bicubic", True), ("bilinear", False), ("bilinear", True)]
ALL = SMOOTH + [("nearest", False), ("area", False)]


def interp(x: torch.Tensor, size, mode: str, antialias: bool) -> torch.Tensor:
    kw = {"align_corners": False, "antialias": antialias} if mode in ("bicubic", "bilinear") else {}
    return F.interpolate(x, size=size, mode=mode, **kw)


def full_matrix(in_size, out_size, mode, antialias) -> torch.Tensor:
    """The whole (Ho·Wo × H·W) matrix of the 2-D resize, read off F.interpolate on basis images."""
    h, w = in_size
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    return interp(eye, out_size, mode, antialias).reshape(h * w, -1).T


def power_iteration(in_size, out_size, mode, antialias, iters=300, seed=0) -> float:
    """||R|| estimated with R and its adjoint (autograd), never forming a matrix."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 1, *in_size, dtype=torch.float64, generator=g)
    sigma = 0.0
    for _ in range(iters):
        v = (v / v.norm()).requires_grad_()
        y = interp(v, out_size, mode, antialias)
        (rtr,) = torch.autograd.grad(y, v, y)  # R^T R v
        sigma = float(y.detach().norm())
        v = rtr.detach()
    return sigma


@pytest.mark.parametrize("mode,antialias", ALL)
@pytest.mark.parametrize("in_size,out_size", [((13, 17), (29, 11)), ((40, 9), (7, 30)), ((16, 16), (16, 16))])
def test_separable_matrices_reproduce_interpolate(mode, antialias, in_size, out_size):
    x = torch.rand(2, 3, *in_size, dtype=torch.float64)
    a_h = resize_matrix(in_size[0], out_size[0], mode, antialias)
    a_w = resize_matrix(in_size[1], out_size[1], mode, antialias)
    assert a_h.shape == (out_size[0], in_size[0]) and a_h.dtype == torch.float64
    torch.testing.assert_close(a_h @ x @ a_w.T, interp(x, out_size, mode, antialias), rtol=1e-12, atol=1e-12)
    # and in float32, as the metrics run it
    x32 = x.float()
    torch.testing.assert_close((a_h @ x @ a_w.T).float(), interp(x32, out_size, mode, antialias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,antialias", ALL)
def test_norm_equals_the_kronecker_matrix_norm(mode, antialias):
    for in_size, out_size in [((5, 7), (11, 6)), ((12, 9), (4, 13)), ((8, 8), (3, 3))]:
        exact = float(torch.linalg.matrix_norm(full_matrix(in_size, out_size, mode, antialias), ord=2))
        assert resize_norm(in_size, out_size, mode, antialias) == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("mode,antialias", SMOOTH)
def test_norm_matches_power_iteration_at_realistic_sizes(mode, antialias):
    for in_size, out_size in [((40, 30), (96, 96)), ((90, 80), (30, 40))]:
        est = power_iteration(in_size, out_size, mode, antialias, iters=150)
        exact = resize_norm(in_size, out_size, mode, antialias)
        assert est <= exact * (1 + 1e-9)  # a power-iteration estimate is a lower bound
        assert est == pytest.approx(exact, rel=5e-3)  # (top singular values are close: slow convergence)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 12), w=st.integers(1, 12), ho=st.integers(1, 12), wo=st.integers(2, 12),
    mode_aa=st.sampled_from(ALL),
)
def test_norm_is_exact_for_any_small_sizes(h, w, ho, wo, mode_aa):
    # (output width 1 is left out: torch 2.13's antialiased kernels give memory-format-dependent
    # results there, so "the" operator is not even well defined; no metric resizes to width 1)
    mode, aa = mode_aa
    exact = float(torch.linalg.matrix_norm(full_matrix((h, w), (ho, wo), mode, aa), ord=2))
    got = resize_norm((h, w), (ho, wo), mode, aa)
    assert got == pytest.approx(exact, rel=1e-9, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), seed=st.integers(0, 2**16), mode_aa=st.sampled_from(SMOOTH))
def test_norm_bounds_every_perturbation(h, w, seed, mode_aa):
    """The certificate's use: ||R δ|| <= ||R|| ||δ|| for any δ (here random and worst-ish cases)."""
    mode, aa = mode_aa
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(4, 3, h, w, dtype=torch.float64, generator=g)
    delta[0] = (-1.0) ** (torch.arange(h)[:, None] + torch.arange(w)[None, :])  # checkerboard: high frequency
    out = interp(delta, (24, 24), mode, aa)
    bound = resize_norm((h, w), (24, 24), mode, aa)
    assert (out.flatten(1).norm(dim=1) <= bound * delta.flatten(1).norm(dim=1) * (1 + 1e-9)).all()


def test_resize_module():
    r = Resize((24, 20), "bicubic")
    x = torch.rand(2, 3, 10, 30)
    torch.testing.assert_close(r(x), interp(x, (24, 20), "bicubic", False))
    assert r(torch.rand(1, 3, 24, 20)).shape == (1, 3, 24, 20)
    assert r.norm((24, 20)) == 1.0 and Resize(None).norm((5, 5)) == 1.0
    assert r.norm((10, 30)) == resize_norm((10, 30), (24, 20), "bicubic", False) > 1.0  # bicubic overshoots
    assert "size=(24, 20)" in repr(r)
    assert set(MODES) == {"bilinear", "bicubic", "nearest", "area"}
    with pytest.raises(InputError, match="unknown resize mode 'lanczos'"):
        Resize((4, 4), "lanczos")

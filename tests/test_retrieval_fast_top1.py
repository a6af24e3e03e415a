"""Batched certified top-1 (one float32 pass + exact scores of the rows that matter) returns exactly what
the full-gallery float64 certificate returns: same top-1, same radius, same margin."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robustsim.certify import geometry
from robustsim.retrieval.fast_top1 import certified_top1, score_error


def _gallery(m, d, clusters, noise, seed):
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(clusters, d))
    x = cent[rng.integers(0, clusters, m)] + noise * rng.normal(size=(m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x.astype(np.float32)), cent, rng


def _queries(gal, cent, rng, n, d):
    q = cent[rng.integers(0, len(cent), n)] + 0.35 * rng.normal(size=(n, d))
    q *= rng.uniform(0.5, 20, (n, 1))
    q[:3] = gal[:3].double().numpy() * 7 + 1e-5 * rng.normal(size=(3, d))  # near-duplicates: large radii
    q[3] = gal[10].double().numpy() * 3  # an exact stored direction
    return geometry.BoundedFeatures.declared(torch.from_numpy(q), rng.uniform(0.5, 3), 1e-6)


def _same(a, b):
    assert torch.equal(a.index, b.index)
    assert torch.allclose(a.radius, b.radius, rtol=1e-12, atol=0)
    assert torch.allclose(a.margin, b.margin, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("m,d,clusters,noise", [(3000, 64, 50, 0.35), (2000, 32, 5, 0.05), (500, 16, 500, 1.0)])
def test_equals_the_full_float64_certificate(m, d, clusters, noise):
    gal, cent, rng = _gallery(m, d, clusters, noise, seed=m)
    gal[20] = gal[21]  # an exact duplicate pair (a tie for its queries)
    q = _queries(gal, cent, rng, 40, d)
    ref = geometry.top1_radius(q, gal)
    _same(certified_top1(q, gal, batch_size=16), ref)
    _same(certified_top1(q, gal, max_subset=1), ref)  # every query through the grow-and-verify path
    assert (ref.radius[:3] > 0).all() and ref.radius.max() > 0


def test_reduced_precision_matmul_falls_back_to_float64():
    gal, cent, rng = _gallery(800, 32, 20, 0.3, seed=1)
    q = _queries(gal, cent, rng, 10, 32)
    ref = geometry.top1_radius(q, gal)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        _same(certified_top1(q, gal), ref)
    finally:
        torch.set_float32_matmul_precision(old)


def test_tiny_galleries_and_float64_gallery():
    gal, cent, rng = _gallery(2, 8, 2, 0.1, seed=2)
    q = _queries(torch.cat([gal] * 6), cent, rng, 5, 8)
    for g in (gal[:1], gal, gal.double()):
        _same(certified_top1(q, g), geometry.top1_radius(q, g))


def test_float32_score_bound_holds():
    rng = np.random.default_rng(3)
    for d in (8, 256, 1280):
        e = rng.normal(size=(4000, d)) ** 3  # heavy-tailed components stress the summation
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        u = rng.normal(size=d) ** 3
        u /= np.linalg.norm(u)
        s32 = torch.from_numpy(e.astype(np.float32)) @ torch.from_numpy(u.astype(np.float32))
        s64 = torch.from_numpy(e.astype(np.float32)).double() @ torch.from_numpy(u)
        assert float((s32.double() - s64).abs().max()) <= score_error(d, torch.float32, geometry.UNIT_TOL)

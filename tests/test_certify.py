"""Certificates: exact closed-form cases, units, monotonicity, and the float-error allowance.

The attacks against the certificates live in test_certify_attack.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import real_photo
from robustsim import certify
from robustsim.errors import InputError
from robustsim.metrics.embedding import EmbeddingMetric
from robustsim.preprocess import resize_norm

F64 = torch.float64


class Affine(nn.Module):
    """g(x) = scale · W flatten(x) - b with W having orthonormal rows: Lipschitz constant exactly `scale`."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.scale = scale

    def forward(self, x):
        return self.scale * (x.flatten(1) @ self.w.T) - self.b


class Toy(EmbeddingMetric):
    certified = True

    def __init__(self, w, b, size=4, scale=1.0, lipschitz=None):
        super().__init__(Affine(w, b, scale), input_size=(size, size))
        self.lipschitz = scale if lipschitz is None else lipschitz


def identity_toy(b: torch.Tensor, size: int = 4, dtype=F64) -> Toy:
    d = 3 * size * size
    return Toy(torch.eye(d, dtype=dtype), b.to(dtype), size).to(dtype)


def img(gen, size=4, lo=0.3, hi=0.7, dtype=F64):
    return (lo + (hi - lo) * torch.rand(1, 3, size, size, generator=gen, dtype=F64)).to(dtype)


def worst_ref_perturbation(g, c, o):
    """For an identity network: the smallest δ that puts g+δ on the 2AFC boundary <., c-o> = 0 (tangent point)."""
    G = g.norm()
    u = g / G
    n = (c - o) / (c - o).norm()
    cos_b = u @ n
    t = u - cos_b * n
    t = t / t.norm()
    phi = math.pi / 2 - math.acos(float(cos_b))
    return G * math.cos(phi) * t - g


# ---------------------------------------------------------------------------------------------------
# exact 2AFC radius on the identity network (the worst 1-Lipschitz map is reachable)
@pytest.mark.parametrize("target_g", [0.35, 1.0, 3.0])
def test_two_afc_radius_is_exact_on_identity_network(target_g):
    gen = torch.Generator().manual_seed(int(target_g * 100))
    ref, x0, x1 = img(gen), img(gen), img(gen)
    # bias chosen so that ||g(ref)|| = target_g with g(ref) pointing in a random direction
    v = torch.randn(48, generator=gen, dtype=F64)
    b = ref.flatten() - target_g * v / v.norm()
    m = identity_toy(b)
    cert = certify.two_afc(m, ref, x0, x1)
    g = lambda x: x.flatten() - b  # noqa: E731
    u = lambda x: g(x) / g(x).norm()  # noqa: E731
    c_img, o_img = (x1, x0) if int(cert.closer) == 1 else (x0, x1)
    c, o = u(c_img), u(o_img)
    M = float(u(ref) @ (c - o))
    C = float((c - o).norm())
    G = float(g(ref).norm())
    assert G == pytest.approx(target_g, rel=1e-12)
    assert float(cert.gnorm) == pytest.approx(G, rel=1e-12)
    assert float(cert.margin) == pytest.approx(M, rel=1e-9)
    assert float(cert.radius) == pytest.approx(G * M / C, rel=1e-9)  # ours: tight
    assert float(cert.paper_radius) == pytest.approx(M / C, rel=1e-9)  # LipSim's formula
    assert float(cert.radius) >= G * M / (C + M)  # DESIGN §3.5's bound is weaker

    # the radius is tight: the tangent perturbation flips the decision just beyond it, not before
    delta = worst_ref_perturbation(g(ref), c, o)
    assert float(delta.norm()) == pytest.approx(float(cert.radius), rel=1e-9)
    for s, flipped in ((0.999, False), (1.001, True)):
        r2 = ref + s * delta.view_as(ref)
        assert 0 <= float(r2.min()) and float(r2.max()) <= 1
        assert bool(m(r2, c_img) > m(r2, o_img)) == flipped
    if target_g < 1:
        # the paper's radius is unsound here: an actual perturbation inside it flips the decision
        assert float(cert.paper_radius) > 2 * float(cert.radius)
        s = 0.99 * float(cert.paper_radius) / float(cert.radius)
        r2 = ref + s * delta.view_as(ref)
        assert float((r2 - ref).norm()) < float(cert.paper_radius)
        assert bool(m(r2, c_img) > m(r2, o_img))


def test_distance_interval_is_attained_on_identity_network():
    gen = torch.Generator().manual_seed(3)
    x, y = img(gen), img(gen)
    v = torch.randn(48, generator=gen, dtype=F64)
    b = x.flatten() - 0.8 * v / v.norm()  # ||g(x)|| = 0.8 < 1
    m = identity_toy(b)
    gx, gy = x.flatten() - b, y.flatten() - b
    u, w = gx / gx.norm(), gy / gy.norm()
    theta = math.acos(float(u @ w))
    eps = 0.05
    phi = math.asin(eps / 0.8)
    lo, hi = certify.distance_interval(m, x, y, eps)
    assert float(hi) == pytest.approx(1 - math.cos(theta + phi), rel=1e-9)
    assert float(lo) == pytest.approx(1 - math.cos(theta - phi), rel=1e-9)
    # the extremes are reached by tangent perturbations of size eps, rotating toward / away from y
    e2 = w - (u @ w) * u
    e2 = e2 / e2.norm()
    for sign, bound in ((-1, hi), (1, lo)):
        direction = math.cos(phi) * u + sign * math.sin(phi) * e2
        g_new = 0.8 * math.cos(phi) * direction
        delta = (g_new - gx).view_as(x)
        assert float(delta.norm()) == pytest.approx(eps, rel=1e-9)
        assert float(m(x + delta, y)) == pytest.approx(float(bound), rel=1e-8)
    # tighter than the chord bound sqrt(2d) ± eps/(G - eps) (DESIGN) and than the paper's |Δd| <= eps/G-free form
    d = float(m(x, y))
    rho = eps / (0.8 - eps)
    assert float(hi) < (math.sqrt(2 * d) + rho) ** 2 / 2
    assert float(lo) > max(0.0, math.sqrt(2 * d) - rho) ** 2 / 2
    # unbounded once the ball around g(x) holds the origin
    lo, hi = certify.distance_interval(m, x, y, 0.81)
    assert (float(lo), float(hi)) == (0.0, 2.0)


def test_candidate_perturbation_radius_is_exact_on_identity_network():
    gen = torch.Generator().manual_seed(5)
    ref, x0, x1 = img(gen), img(gen), img(gen)
    b = torch.rand(48, generator=gen, dtype=F64) * 0.1
    m = identity_toy(b)
    cert = certify.two_afc(m, ref, x0, x1, perturbed="x0")
    g = lambda x: x.flatten() - b  # noqa: E731
    u = lambda x: g(x) / g(x).norm()  # noqa: E731
    a0, a1 = math.acos(float(u(ref) @ u(x0))), math.acos(float(u(ref) @ u(x1)))
    gap = abs(a1 - a0)
    G0 = float(g(x0).norm())
    expected = G0 * math.sin(gap) if gap < math.pi / 2 else G0
    assert float(cert.radius) == pytest.approx(expected, rel=1e-7)
    assert math.isnan(float(cert.paper_radius))
    both = certify.two_afc(m, ref, x0, x1, perturbed="both")
    one = certify.two_afc(m, ref, x0, x1, perturbed="x1")
    assert 0 < float(both.radius) <= min(float(cert.radius), float(one.radius))


# ---------------------------------------------------------------------------------------------------
# units: resize norm and the Lipschitz constant
def test_radius_is_in_callers_pixels_through_resize_norm_and_lipschitz():
    gen = torch.Generator().manual_seed(7)
    w = torch.linalg.qr(torch.randn(192, 192, generator=gen, dtype=F64))[0][:64]  # 64 orthonormal rows
    b = torch.randn(64, generator=gen, dtype=F64) * 0.3
    for mode, size in (("bilinear", 13), ("bilinear", 5)):  # down- and up-sizing: ||R|| < 1 and > 1
        m = Toy(w, b, size=8).to(F64)
        m.resize.mode = mode
        big = [torch.rand(2, 3, size, size, generator=gen, dtype=F64) for _ in range(3)]
        native = [m.resize(x) for x in big]  # bilinear: convex combinations, stay in [0, 1]
        r_big = certify.two_afc(m, *big)
        r_nat = certify.two_afc(m, *native)
        R = resize_norm((size, size), (8, 8), mode)
        assert abs(R - 1) > 0.1  # the conversion matters
        assert torch.allclose(r_big.lipschitz, torch.full((2,), R, dtype=F64))
        assert torch.allclose(r_nat.lipschitz, torch.ones(2, dtype=F64))
        # same features, so the native radius is exactly R times the caller's one
        assert torch.equal(r_big.closer, r_nat.closer)
        assert torch.allclose(r_nat.radius, r_big.radius * R, rtol=1e-9)
        assert torch.allclose(r_nat.paper_radius, r_big.paper_radius * R, rtol=1e-9)
        lo_b, hi_b = certify.distance_interval(m, big[0], big[1], 0.1)
        lo_n, hi_n = certify.distance_interval(m, native[0], native[1], 0.1 * R)
        assert torch.allclose(lo_b, lo_n, rtol=1e-9) and torch.allclose(hi_b, hi_n, rtol=1e-9)
    big = [torch.rand(2, 3, 8, 8, generator=gen, dtype=F64) for _ in range(3)]
    m = Toy(w, b, size=8).to(F64)
    base = certify.two_afc(m, *big)
    # the same function scaled by 2 (L = 2): G and K double, radii unchanged
    m2 = Toy(w, 2 * b, size=8, scale=2.0).to(F64)
    r2 = certify.two_afc(m2, *big)
    assert torch.equal(r2.closer, base.closer)
    assert torch.allclose(r2.radius, base.radius, rtol=1e-9)
    m3 = Toy(w, b, size=8, lipschitz=2.0).to(F64)  # a looser declared constant halves the radius
    assert torch.allclose(certify.two_afc(m3, *big).radius, base.radius / 2, rtol=1e-9)


# ---------------------------------------------------------------------------------------------------
# monotonicity and self-consistency (hypothesis)
def _random_toy(seed: int, gscale: float):
    gen = torch.Generator().manual_seed(seed)
    w = torch.linalg.qr(torch.randn(48, 48, generator=gen, dtype=F64))[0][:16]
    b = torch.randn(16, generator=gen, dtype=F64) * gscale
    return Toy(w, b, size=4).to(F64), gen


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), gscale=st.sampled_from([0.05, 0.3, 2.0]))
def test_intervals_and_radii_are_monotone_and_consistent(seed, gscale):
    m, gen = _random_toy(seed, gscale)
    x, y, z = (torch.rand(3, 3, 4, 4, generator=gen, dtype=F64) for _ in range(3))
    d = m(x, y)
    prev_lo, prev_hi = certify.distance_interval(m, x, y, 0.0)
    assert torch.all(prev_lo <= d) and torch.all(d <= prev_hi)
    for eps in (0.02, 0.2, 1.0):
        for pert in ("x", "both"):
            lo, hi = certify.distance_interval(m, x, y, eps, perturbed=pert)
            assert torch.all(lo <= d) and torch.all(d <= hi) and torch.all(lo >= 0) and torch.all(hi <= 2)
        lo, hi = certify.distance_interval(m, x, y, eps)
        lo_b, hi_b = certify.distance_interval(m, x, y, eps, perturbed="both")
        assert torch.all(lo <= prev_lo) and torch.all(hi >= prev_hi)
        assert torch.all(lo_b <= lo) and torch.all(hi_b >= hi)
        prev_lo, prev_hi = lo, hi
    # threshold radius = the edge of the interval condition (bisection is right)
    tau = float(d.mean())
    th = certify.threshold(m, x, y, tau)
    assert torch.equal(th.decision, d <= tau)
    for i in range(3):
        r = float(th.radius[i])
        if r <= 0:
            continue
        lo, hi = certify.distance_interval(m, x[i:i + 1], y[i:i + 1], 0.999 * r)
        assert (float(hi) <= tau) if bool(th.decision[i]) else (float(lo) > tau)
        lo, hi = certify.distance_interval(m, x[i:i + 1], y[i:i + 1], 1.001 * r + 1e-12)
        assert not ((float(hi) <= tau) if bool(th.decision[i]) else (float(lo) > tau))
    # 2AFC: the reference radius is G times the paper's (up to the float allowance); "both" <= each single
    c = certify.two_afc(m, x, y, z)
    assert torch.all(c.radius <= c.gnorm * c.paper_radius + 1e-12)
    assert torch.all(c.radius >= c.gnorm * c.paper_radius * (1 - 1e-9) - 1e-10)
    rb = certify.two_afc(m, x, y, z, perturbed="both").radius
    r0 = certify.two_afc(m, x, y, z, perturbed="x0").radius
    r1 = certify.two_afc(m, x, y, z, perturbed="x1").radius
    assert torch.all(rb <= torch.minimum(r0, r1) + 1e-12)


def test_top1_matches_brute_force_and_pruning_is_exact():
    gen = torch.Generator().manual_seed(11)
    d = 32
    gallery = torch.nn.functional.normalize(torch.randn(300, d, generator=gen, dtype=F64), dim=1)
    gallery[7] = torch.nn.functional.normalize(gallery[3] + 1e-3 * torch.randn(d, generator=gen, dtype=F64), dim=0)
    queries = 2.5 * gallery[[3, 10, 50]] + 0.4 * torch.randn(3, d, generator=gen, dtype=F64)
    res = certify.top1_radius(queries, gallery, lipschitz=1.3, rel_error=0.0, gallery_error=0.0)
    for i in range(3):
        g = queries[i]
        G = float(g.norm())
        u = g / G
        a = int((gallery @ u).argmax())
        assert int(res.index[i]) == a
        best = math.inf
        for bi in range(300):
            if bi == a:
                continue
            diff = gallery[a] - gallery[bi]
            best = min(best, G * float(u @ diff) / float(diff.norm()) / 1.3)
        assert float(res.radius[i]) == pytest.approx(best, rel=1e-9)
    # via a metric (images and stored embeddings give the same answer)
    m, gen2 = _random_toy(1, 0.3)
    q = torch.rand(2, 3, 4, 4, generator=gen2, dtype=F64)
    gal_imgs = torch.rand(20, 3, 4, 4, generator=gen2, dtype=F64)
    t_img = certify.top1(m, q, gal_imgs)
    t_emb = certify.top1(m, q, m.embed(gal_imgs))
    assert torch.equal(t_img.index, t_emb.index) and torch.allclose(t_img.radius, t_emb.radius)
    assert torch.equal(t_img.index, (m.embed(q) @ m.embed(gal_imgs).T).argmax(1))


# ---------------------------------------------------------------------------------------------------
# float safety: the allowance is enough (float32 vs float64 recomputation)
def _tiny_lipsim(seed: int, **over):
    from robustsim.metrics.lipsim import LipSim

    torch.manual_seed(seed)
    cfg = dict(input_size=32, stem="unshuffle4", channels=48, conv_depth=3, conv_inner=16, pool=(2,),
               linear_depth=2, linear_inner=64, embed_dim=128)
    cfg.update(over)
    return LipSim(**cfg).eval().requires_grad_(False)


def _photo_triplets(size=32):
    names = ["astronaut", "chelsea", "coffee", "camera"]
    gen = torch.Generator().manual_seed(0)
    ref = torch.cat([real_photo(n, size) for n in names])
    noise = lambda s: (ref + s * torch.randn(ref.shape, generator=gen)).clamp(0, 1)  # noqa: E731
    # near-duplicates (1e-3, 1e-5 noise, identical) and ordinary distortions
    return ref, [noise(1e-3), noise(1e-5), ref.clone(), noise(0.05), ref.roll(2, dims=3), ref.flip(0)]


def test_float_certificates_hold_float32_vs_float64():
    """Default mode (float64 recomputation, proven bound): certificates agree with the float64 model and
    are as tight as it; "float32" mode (the model's own pass, proven to cover every float32 evaluation)
    also contains what a float32 user sees and never claims more than the float64 certificate."""
    for seed, over in [(0, {}), (1, dict(conv_depth=5, linear_depth=3)), (2, dict(stem="pad", channels=8, pool=(4,), conv_depth=2,
                                                                                   conv_inner=4, embed_dim=64))]:
        m32 = _tiny_lipsim(seed, **over)
        m64 = _tiny_lipsim(seed, **over).double()
        ref, others = _photo_triplets()
        k = len(others)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        n = ref.shape[0]
        r = ref.repeat(len(pairs), 1, 1, 1)
        a = torch.cat([others[i] for i, _ in pairs])
        b = torch.cat([others[j] for _, j in pairs])
        r64, a64, b64 = r.double(), a.double(), b.double()
        for pert in ("ref", "both"):
            c32 = certify.two_afc(m32, r, a, b, perturbed=pert)
            c64 = certify.two_afc(m64, r64, a64, b64, perturbed=pert)
            assert c32.method == "float64"
            # the same exact network: the same decisions, radii equal up to the (tiny) proven allowance
            assert torch.equal(c32.closer[c64.radius > 0], c64.closer[c64.radius > 0])
            assert torch.allclose(c32.radius, c64.radius, rtol=1e-6, atol=1e-9)
            assert (c32.radius > 0).float().mean() > 0.2  # and it does certify a fair share of them
            cf = certify.two_afc(m32, r, a, b, perturbed=pert, float_error="float32")
            assert torch.all(cf.radius <= c64.radius)
            pos = cf.radius > 0
            assert torch.equal(cf.closer[pos], c64.closer[pos])
        a, a64 = torch.cat(others), torch.cat(others).double()  # each distorted image once
        r, r64 = r[: k * n], r64[: k * n]
        d64 = m64(r64, a64)
        d32 = m32(r, a).double()  # what a float32 user sees
        lo, hi = certify.distance_interval(m32, r, a, 0.0)
        assert torch.all(lo <= d64) and torch.all(d64 <= hi)
        lo_f, hi_f = certify.distance_interval(m32, r, a, 0.0, float_error="float32")
        assert torch.all(lo_f <= d32) and torch.all(d32 <= hi_f)
        assert torch.all(lo_f <= d64) and torch.all(d64 <= hi_f)
        for eps in (0.01, 0.3):
            lo_f, hi_f = certify.distance_interval(m32, r, a, eps, perturbed="both", float_error="float32")
            lo64, hi64 = certify.distance_interval(m64, r64, a64, eps, perturbed="both")
            assert torch.all(lo_f <= lo64) and torch.all(hi64 <= hi_f)


def test_near_duplicates_no_cancellation():
    m32 = _tiny_lipsim(0).requires_grad_(False)
    m64 = _tiny_lipsim(0).double().requires_grad_(False)
    ref, others = _photo_triplets()
    near = others[1]  # 1e-5 noise
    lo, hi = certify.distance_interval(m32, ref, near, 0.0)
    d64 = m64(ref.double(), near.double())
    e32, e64 = m32.embed(ref), m32.embed(near)
    naive = 1 - (e32 * e64).sum(1)  # 1 - cos in float32: cancels
    assert torch.all(lo >= 0)
    assert torch.all(lo <= d64) and torch.all(d64 <= hi)
    # the difference form (what the metric and the certificates use) is accurate relative to d; 1 - cos is not
    ours = m32(ref, near).double()
    assert torch.all((ours - d64).abs() <= 2e-2 * d64)
    assert torch.all(d64 < 1e-6) and float(((naive.double() - d64).abs() / d64).max()) > 0.9


def test_float_error_modes_order_and_declared_error():
    """exact (declared 0) >= default float64 >= float32-proven radii; a declared error shrinks radii."""
    m = _tiny_lipsim(0)
    ref, others = _photo_triplets()
    args = (m, ref, others[3], others[4])
    exact = certify.two_afc(*args, float_error=0.0)
    base = certify.two_afc(*args)
    f32 = certify.two_afc(*args, float_error="float32")
    assert base.method == "float64" and f32.method == "float32" and exact.method == "declared"
    assert torch.allclose(base.radius, exact.radius, rtol=1e-5) and torch.all(f32.radius <= base.radius)
    assert torch.all(f32.float_error > base.float_error)
    loose = certify.two_afc(*args, float_error=1e-2)
    assert torch.all(loose.radius <= exact.radius) and torch.any(loose.radius < exact.radius)
    with pytest.raises(InputError, match="float_error"):
        certify.two_afc(*args, float_error="guess")


# ---------------------------------------------------------------------------------------------------
# bad input
def test_bad_input_raises_input_error():
    gen = torch.Generator().manual_seed(0)
    m = identity_toy(torch.zeros(48))
    x = img(gen)
    with pytest.raises(InputError, match="perturbed"):
        certify.two_afc(m, x, x, x, perturbed="all")
    with pytest.raises(InputError, match="eps"):
        certify.distance_interval(m, x, x, -1.0)
    with pytest.raises(InputError, match="tau"):
        certify.threshold(m, x, x, 3.0)
    with pytest.raises(InputError, match="batch sizes"):
        certify.two_afc(m, x.repeat(2, 1, 1, 1), x.repeat(3, 1, 1, 1), x)
    with pytest.raises(InputError, match="values must lie"):
        certify.two_afc(m, x + 2, x, x)
    plain = EmbeddingMetric(nn.Flatten(), input_size=(4, 4))
    with pytest.raises(InputError, match="not a certified"):
        certify.two_afc(plain, x.float(), x.float(), x.float())
    with pytest.raises(InputError, match="dimensions"):
        certify.top1_radius(torch.zeros(2, 3), torch.zeros(4, 5))

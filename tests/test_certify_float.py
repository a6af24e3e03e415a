"""Certificates that hold in floating point (issue 19): an adversarial network family, every certificate
kind attacked and compared with a float64 recomputation, the precision guard, stale Lipschitz state,
input dtypes and the feature contracts.

"Before" numbers use the legacy calibrated allowance (a declared relative error 2^8·eps32, the old
default) to show that these tests can fail; "after" is the default (float64 recomputation with a
proven bound) and the proven float32 mode.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import real_photo
from test_certify_attack import pgd_l2
from robustsim import certify
from robustsim.certify import PrecisionError, geometry
from robustsim.errors import InputError
from robustsim.lipschitz import clear_caches
from robustsim.metrics.lipsim import LipSim

F64 = torch.float64
LEGACY = 2.0 ** 8 * float(torch.finfo(torch.float32).eps)


# ---------------------------------------------------------------------------------------------------
# the adversarial family
def _lipsim(seed=0, **over):
    torch.manual_seed(seed)
    cfg = dict(input_size=32, stem="unshuffle4", channels=48, conv_depth=2, conv_inner=8, pool=(2,),
               linear_depth=2, linear_inner=32, embed_dim=128)
    cfg.update(over)
    return LipSim(**cfg).eval().requires_grad_(False)


def cancelling_net(ref: torch.Tensor, gnorm: float = 1e-4, conv_depth: int = 0, seed: int = 0) -> LipSim:
    """A valid 1-Lipschitz LipSim whose one SLL dense layer has a bias that cancels the reference:
    g(ref) = -gnorm·w while the activations entering that layer have norm ≈ 28 (a 32² photo)."""
    m = _lipsim(seed, conv_depth=conv_depth, linear_depth=1, linear_inner=1, embed_dim=768)
    net64 = copy.deepcopy(m.encoder).double()
    with torch.no_grad():
        h = ref.double()
        for name, layer in net64.layers():
            if name.startswith("linears"):
                break
            h = layer(h)
        pre = h[0]
        lin = m.encoder.linears[0]
        w = pre / pre.norm()
        lin.weight.copy_(w[None].float())
        lin.q.zero_()
        lin.bias.fill_(float(-pre.norm() / 2 + gnorm / 2))
    return m


def photo(name="astronaut", size=32):
    return real_photo(name, size)


def near_triplets(ref: torch.Tensor, n: int = 24, seed: int = 0):
    """ref repeated, x0/x1 small and nearly equal perturbations of it (decisions with small margins)."""
    gen = torch.Generator().manual_seed(seed)
    r = ref.repeat(n, 1, 1, 1)
    s = torch.logspace(-3, -1.3, n).view(-1, 1, 1, 1)
    base = torch.randn(r.shape, generator=gen)
    x0 = (r + s * base + 0.3 * s * torch.randn(r.shape, generator=gen)).clamp(0, 1)
    x1 = (r + s * base + 0.3 * s * torch.randn(r.shape, generator=gen)).clamp(0, 1)
    return r, x0, x1


def f64_copy(m):
    return copy.deepcopy(m).double()


def f64_decision(m64, ref, x0, x1):
    with torch.no_grad():
        d0, d1 = m64(ref.double(), x0.double()), m64(ref.double(), x1.double())
    return (d1 < d0).long(), d0, d1


def _legacy(m, ref, x0, x1):
    """The former default: the metric's own float32 features with the calibrated allowance 2^8·eps32."""
    with torch.no_grad():
        f = [geometry.BoundedFeatures.declared(m.raw_features(t), 1.0, LEGACY) for t in (ref, x0, x1)]
    c = geometry.two_afc_bounds(*f, "ref")
    lo, hi = geometry.distance_interval(f[0], f[1], 0.0)
    return c["closer"], c["radius"], lo, hi


def zero_eps_violations(m, ref, x0, x1, float_error):
    """(wrong certified 2AFC decisions, float64 distances outside the ε = 0 interval) vs float64.
    float_error "legacy": the former calibrated allowance on float32 features."""
    m64 = f64_copy(m)
    closer64, d0, _ = f64_decision(m64, ref, x0, x1)
    if float_error == "legacy":
        closer, radius, lo, hi = _legacy(m, ref, x0, x1)
    else:
        c = certify.two_afc(m, ref, x0, x1, float_error=float_error)
        closer, radius = c.closer, c.radius
        lo, hi = certify.distance_interval(m, ref, x0, 0.0, float_error=float_error)
    wrong = int(((radius > 0) & (closer != closer64)).sum())
    outside = int(((d0 < lo) | (d0 > hi)).sum())
    return wrong, outside, radius


# ---------------------------------------------------------------------------------------------------
def test_cancelling_bias_network_breaks_the_legacy_allowance_not_the_proven_bound():
    ref = photo("astronaut")
    m = cancelling_net(ref)
    g32 = m.raw_features(ref).double()
    g64 = f64_copy(m).raw_features(ref.double())
    assert float(g64.norm()) == pytest.approx(1e-4, rel=1e-3)
    rel = float((g32 - g64).norm() / g64.norm())
    assert rel > 100 * LEGACY  # the network is what the issue describes: error far beyond 2^8·eps32
    r, x0, x1 = near_triplets(ref)
    wrong, outside, _ = zero_eps_violations(m, r, x0, x1, "legacy")
    assert outside > 0  # before: the calibrated allowance excludes the float64 distance
    for mode in (None, "float32"):
        wrong, outside, c = zero_eps_violations(m, r, x0, x1, mode)
        assert wrong == 0 and outside == 0, (mode, wrong, outside)
    # the float32 mode's proven allowance covers the float32 error it sees
    bf = certify.bounded_features(m, ref, float_error="float32")
    assert float(bf.err[0]) >= float((g32 - g64).norm())


@pytest.mark.parametrize("family", ["cancel", "cancel_conv", "tiny_g", "resize", "blur", "input_blur"])
def test_every_certificate_kind_attacked_and_checked_in_float64(family):
    ref = photo("chelsea")
    size = 32
    if family == "cancel":
        m = cancelling_net(ref, 1e-4)
    elif family == "cancel_conv":
        m = cancelling_net(ref, 1e-3, conv_depth=2, seed=1)
    elif family == "tiny_g":
        m = cancelling_net(ref, 3e-2, seed=2)
    elif family == "blur":  # a binomial blur before the pool (LipSimConfig.blur)
        m = _lipsim(4, blur=3)
    elif family == "input_blur":  # a binomial blur on the input image too (LipSimConfig.input_blur)
        m = _lipsim(5, blur=3, input_blur=5)
    else:  # images needing a resize (40 -> 32, bicubic), ordinary random network
        m = _lipsim(3)
        size = 40
        ref = photo("chelsea", size)
    r, x0, x1 = near_triplets(ref, n=8, seed=1)
    m64 = f64_copy(m)
    violations = 0
    for pert in ("ref", "x0", "x1", "both"):
        c = certify.two_afc(m, r, x0, x1, perturbed=pert)
        sel = c.radius > 0
        closer64, _, _ = f64_decision(m64, r, x0, x1)
        violations += int((sel & (c.closer != closer64)).sum())
        if not bool(sel.any()):
            continue
        eps = (0.999 * c.radius).clamp_min(1e-12)
        one = c.closer.bool().view(-1, 1, 1, 1)
        imgs = {"ref": r.double(), "x0": x0.double(), "x1": x1.double()}  # float64 pixels: radii can be ~1e-6
        moved = ["ref"] if pert == "ref" else (["x0", "x1"] if pert == "both" else [pert])

        def wrong_margin(zs):
            cur = dict(imgs)
            cur.update(dict(zip(moved, zs)))
            e = [m.embed(cur[k]) for k in ("ref", "x0", "x1")]
            d0, d1 = (e[0] - e[1]).pow(2).sum(1), (e[0] - e[2]).pow(2).sum(1)
            return torch.where(one.view(-1), d1 - d0, d0 - d1) * -1.0

        _, adv = pgd_l2(wrong_margin, [imgs[k] for k in moved], eps, steps=25, restarts=1)
        cur = dict(imgs)
        cur.update(dict(zip(moved, adv)))
        adv64, _, _ = f64_decision(m64, cur["ref"], cur["x0"], cur["x1"])
        violations += int((sel & (adv64 != c.closer)).sum())
    # distance interval (x and both) and threshold, attacked in both directions
    for pert in ("x", "both"):
        eps = 0.05
        lo, hi = certify.distance_interval(m, r, x0, eps, perturbed=pert)
        for sign in (1.0, -1.0):
            moved = [r.double()] if pert == "x" else [r.double(), x0.double()]

            def dist(zs):
                a = zs[0]
                b = zs[1] if pert == "both" else x0
                return sign * m(a, b)

            _, adv = pgd_l2(dist, moved, torch.full((r.shape[0],), eps), steps=20, restarts=1)
            with torch.no_grad():
                d64 = m64(adv[0].double(), (adv[1] if pert == "both" else x0).double())
            violations += int(((d64 < lo) | (d64 > hi)).sum())
    with torch.no_grad():
        d = m64(r.double(), x0.double())
    tau = float(d.median())
    th = certify.threshold(m, r, x0, tau)
    if bool((th.radius > 0).any()):
        sign = torch.where(th.decision, 1.0, -1.0).to(torch.float32)
        _, (adv,) = pgd_l2(lambda zs: sign * m(zs[0], x0), [r.double()], (0.999 * th.radius).clamp_min(1e-12),
                           steps=25, restarts=1)
        with torch.no_grad():
            d64 = m64(adv.double(), x0.double())
        violations += int(((th.radius > 0) & ((d64 <= tau) != th.decision)).sum())
    # top-1: query perturbed, stored gallery
    gallery = m.embed(torch.cat([x0, x1]))
    t1 = certify.top1(m, r, gallery)
    if bool((t1.radius > 0).any()):
        gal = gallery.detach()

        def top_margin(zs):
            s = m.embed(zs[0]) @ gal.T
            own = s.gather(1, t1.index.view(-1, 1)).squeeze(1)
            s = s.scatter(1, t1.index.view(-1, 1), -math.inf)
            return s.max(1).values - own

        _, (adv,) = pgd_l2(top_margin, [r.double()], (0.999 * t1.radius).clamp_min(1e-12), steps=25, restarts=1)
        with torch.no_grad():
            e64 = m64.embed(adv.double())
        top64 = (e64 @ gal.double().T).argmax(1)
        violations += int(((t1.radius > 0) & (top64 != t1.index)).sum())
    assert violations == 0


# ---------------------------------------------------------------------------------------------------
# proven bound: hypothesis over random networks (including cancelling biases)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), cancel=st.booleans(), wscale=st.sampled_from([0.3, 1.0, 3.0]),
       blur=st.sampled_from([1, 3]), input_blur=st.sampled_from([1, 3]))
def test_proven_float32_bound_covers_the_float64_recomputation(seed, cancel, wscale, blur, input_blur):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, 32, 32, generator=gen)
    m = cancelling_net(x[:1], 1e-3, conv_depth=1, seed=seed) if cancel else _lipsim(seed, blur=blur,
                                                                                     input_blur=input_blur)
    with torch.no_grad():
        for layer in m.encoder.convs:
            layer.kernel.mul_(wscale)
    bf = certify.bounded_features(m, x, float_error="float32")
    g64 = f64_copy(m).raw_features(x.double())
    assert torch.all((bf.g - g64).norm(dim=1) <= bf.err)
    b64 = certify.bounded_features(m, x)
    assert torch.all((b64.g - g64).norm(dim=1) <= b64.err + 1e-12 * g64.norm(dim=1))
    assert torch.all(b64.err < 1e-8 * (1 + g64.norm(dim=1)))  # float64 mode: tight


# ---------------------------------------------------------------------------------------------------
# precision guard
def test_precision_guard_switches_reduced_precision_off_and_restores(monkeypatch):
    m = _lipsim(0)
    x = torch.rand(2, 3, 32, 32)
    b = torch.backends
    seen = []
    orig = F.conv2d

    def spy(*a, **k):
        seen.append((b.cudnn.conv.fp32_precision, b.mkldnn.conv.fp32_precision, b.cuda.matmul.fp32_precision,
                     b.cudnn.enabled, torch.is_autocast_enabled("cpu")))
        return orig(*a, **k)

    before = (b.cudnn.conv.fp32_precision, b.mkldnn.conv.fp32_precision, b.cuda.matmul.fp32_precision, b.cudnn.enabled)
    monkeypatch.setattr(F, "conv2d", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = certify.two_afc(m, x[:1], x[1:], x[:1].flip(3), float_error="float32")
    assert seen and all(s == ("ieee", "ieee", "ieee", False, False) for s in seen)
    assert (b.cudnn.conv.fp32_precision, b.mkldnn.conv.fp32_precision, b.cuda.matmul.fp32_precision,
            b.cudnn.enabled) == before
    monkeypatch.setattr(F, "conv2d", orig)
    ref = certify.two_afc(m, x[:1], x[1:], x[:1].flip(3), float_error="float32")
    assert torch.equal(c.radius, ref.radius)  # autocast had no effect inside


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_refused(dtype):
    m = _lipsim(0).to(dtype)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(PrecisionError, match="float32 or float64 model"):
        certify.two_afc(m, x, x, x)


def _rounding_conv(bits):
    orig = F.conv2d

    def rnd(t):
        if t is None or t.dtype != torch.float32:
            return t
        m, e = torch.frexp(t)
        return torch.ldexp(torch.round(m * 2.0 ** bits) / 2.0 ** bits, e)

    def conv(x, w, b=None, *a, **k):
        if x.dtype != torch.float32:
            return orig(x, w, b, *a, **k)
        return rnd(orig(rnd(x), rnd(w), b, *a, **k))

    return conv


def test_emulated_reduced_precision_convolution_is_caught(monkeypatch):
    """Convolutions that round to few significant bits make the float64 spot check refuse the float32-mode
    certificate; the default mode recomputes in float64 and is unaffected. Emulated bf16 (8 bits) and TF32
    (11 bits) stay inside the (pessimistic) proven bound here, so there the certificate must simply hold."""
    m = _lipsim(0)
    ref = photo("coffee")
    r, x0, x1 = near_triplets(ref, n=6)
    clean = certify.two_afc(m, r, x0, x1)
    with torch.no_grad():
        m(r, x0)  # rescalings cached with exact convolutions (a patched one would also round t; see below)
    monkeypatch.setattr(F, "conv2d", _rounding_conv(3))
    with pytest.raises(PrecisionError, match="exceeds the proven bound"):
        certify.two_afc(m, r, x0, x1, float_error="float32")
    assert torch.equal(certify.two_afc(m, r, x0, x1).radius, clean.radius)
    for bits in (8, 11):
        monkeypatch.setattr(F, "conv2d", _rounding_conv(bits))
        try:
            c = certify.two_afc(m, r, x0, x1, float_error="float32")
        except PrecisionError:
            continue
        assert torch.all(c.radius <= clean.radius + 1e-9)
        assert torch.equal(c.closer[c.radius > 0], clean.closer[c.radius > 0])
    # a rescaling computed by the bad convolution is measured (ρ) and widens the bound instead
    from robustsim.lipschitz import clear_caches

    clear_caches(m)
    monkeypatch.setattr(F, "conv2d", _rounding_conv(3))
    c = certify.two_afc(m, r, x0, x1, float_error="float32")
    assert torch.all(c.radius <= clean.radius + 1e-9) and torch.all(c.float_error > 10 * clean.float_error)


# ---------------------------------------------------------------------------------------------------
# no stale Lipschitz state
def _edit(m, route):
    lin = m.encoder.linears[0]
    conv = m.encoder.convs[0]
    if route == "data":
        lin.weight.data.mul_(1.5)
        conv.kernel.data.mul_(0.5)
    elif route == "data_assign":
        lin.weight.data = lin.weight.data * 1.5
        conv.q.data = conv.q.data + 1.0
    elif route == "load_state_dict":
        other = copy.deepcopy(m)
        with torch.no_grad():
            other.encoder.linears[0].weight.mul_(1.5)
            other.encoder.convs[0].kernel.mul_(0.5)
        m.load_state_dict(other.state_dict())
    elif route == "copy_":
        with torch.no_grad():
            lin.weight.copy_(lin.weight * 1.5)
            conv.q.copy_(conv.q + 1.0)
    elif route == "optimizer":
        m.requires_grad_(True)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        x = torch.rand(2, 3, 32, 32)
        m.train()
        m.encoder(x).sum().backward()
        opt.step()
        m.eval().requires_grad_(False)


@pytest.mark.parametrize("route", ["data", "data_assign", "load_state_dict", "copy_", "optimizer"])
@pytest.mark.parametrize("mode", [None, "float32"])
def test_certificates_never_use_a_stale_rescaling(route, mode):
    m = _lipsim(4)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = certify.two_afc(m, x[:1], x[1:2], x[2:], float_error=mode)
    with torch.no_grad():
        m(x[:1], x[1:2])  # fill the forward caches too
    _edit(m, route)
    got = certify.two_afc(m, x[:1], x[1:2], x[2:], float_error=mode)
    fresh = copy.deepcopy(m)
    clear_caches(fresh)
    for layer in fresh.modules():
        if hasattr(layer, "_exact"):
            layer._exact = layer._exact_snapshot = None
    want = certify.two_afc(fresh, x[:1], x[1:2], x[2:], float_error=mode)
    assert not torch.allclose(first.d0, got.d0)
    assert torch.equal(got.d0, want.d0) and torch.equal(got.radius, want.radius)


# ---------------------------------------------------------------------------------------------------
# contracts: input dtypes, top-1 gallery rows
def test_metrics_accept_float64_and_half_inputs_and_refuse_integers():
    m = _lipsim(0)
    x = torch.rand(2, 3, 32, 32)
    y = torch.rand(2, 3, 32, 32)
    d = m(x, y)
    assert torch.allclose(m(x.double(), y.double()), d, rtol=1e-5, atol=1e-7)
    xh, yh = x.half(), y.half()
    assert torch.allclose(m(xh, yh), m(xh.float(), yh.float()))
    assert m(xh, yh).dtype == torch.float32 and m.embed(x.double()).dtype == torch.float32
    x.requires_grad_(True)
    m(x.double(), y).sum().backward()  # the cast is differentiable
    assert x.grad is not None
    with pytest.raises(InputError, match="floating tensor"):
        m((x * 255).to(torch.uint8), y)
    with pytest.raises(InputError, match="floating tensor"):
        m.embed(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    c = certify.two_afc(m, x.detach().double(), y.half(), y)
    assert c.radius.dtype == F64


def test_top1_radius_refuses_non_unit_gallery_or_normalises_and_says_so():
    gen = torch.Generator().manual_seed(5)
    d = 16
    gal = F.normalize(torch.randn(40, d, generator=gen, dtype=F64), dim=1)
    q = 3.0 * gal[:2] + 0.5 * torch.randn(2, d, generator=gen, dtype=F64)
    scaled = gal * torch.linspace(0.2, 5.0, 40, dtype=F64)[:, None]
    with pytest.raises(InputError, match="unit vectors"):
        certify.top1_radius(q, scaled, rel_error=0.0, gallery_error=0.0)
    ok = certify.top1_radius(q, gal * (1 + 5e-4), rel_error=0.0, gallery_error=0.0)  # within the tolerance
    assert not ok.normalized
    res = certify.top1_radius(q, scaled, rel_error=0.0, gallery_error=0.0, normalize=True)
    assert res.normalized
    ref = certify.top1_radius(q, gal, rel_error=0.0, gallery_error=0.0)
    assert torch.equal(res.index, ref.index) and torch.allclose(res.radius, ref.radius, rtol=1e-9)
    # brute force: no competitor gives a smaller radius than reported
    for i in range(2):
        u = q[i] / q[i].norm()
        a = int(ref.index[i])
        best = min(float(q[i].norm()) * float(u @ (gal[a] - gal[b])) / float((gal[a] - gal[b]).norm())
                   for b in range(40) if b != a)
        assert float(ref.radius[i]) == pytest.approx(best, rel=1e-9)


def test_geometry_is_public_and_bounded_features_validate():
    g = torch.tensor([[3.0, 4.0]], dtype=F64)
    bf = geometry.BoundedFeatures.exact(g, 2.0)
    assert float(bf.G[0]) == 5.0 and float(bf.cap(1.0)[0]) == pytest.approx(math.asin(2 / 5))
    with pytest.raises(InputError, match="NaN"):
        geometry.BoundedFeatures.exact(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(InputError, match=">= 0"):
        geometry.BoundedFeatures(g, -1.0, 1.0, 1.0)
    with pytest.raises(InputError, match="relative float error"):
        geometry.BoundedFeatures.declared(g, 1.0, -1e-3)

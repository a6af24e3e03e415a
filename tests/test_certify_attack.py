"""Attack the certificates: strong l2 attacks on small random LipSim models and real-photo triplets.

A certificate that an attack can break is the worst bug this project can have. For every certified
decision / interval a strong attack (our own l2 PGD aimed at the certificate's worst case: it
maximises the wrong margin directly, 150 steps, cosine step decay, a zero start plus a random restart;
and the library's APGD-CE) at 0.99 × our radius must never succeed, while at 2-3 × the radius it must
succeed on some samples (so the attack is strong enough for its failures to mean something).
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence

import pytest
import torch
from torch import nn

from conftest import real_photo
from robustsim import certify

STEPS = 150  # soundness attacks (at 0.99 x radius): 150 steps, a zero start + a random restart
RESTARTS = 2
PROBE = dict(steps=100, restarts=1)  # the 2-3 x radius probes only need to find some flips


def tiny_lipsim(seed: int, **over):
    from robustsim.metrics.lipsim import LipSim

    torch.manual_seed(seed)
    cfg = dict(input_size=32, stem="unshuffle4", channels=48, conv_depth=2, conv_inner=16, pool=(2,),
               linear_depth=2, linear_inner=64, embed_dim=128)
    cfg.update(over)
    return LipSim(**cfg).eval().requires_grad_(False)  # gradients to the input only


def pgd_l2(objective: Callable[[List[torch.Tensor]], torch.Tensor], centers: Sequence[torch.Tensor],
           eps: torch.Tensor, steps: int = STEPS, restarts: int = RESTARTS, seed: int = 0):
    """Maximise objective(z_1..z_k) -> (B,) with each z_i within l2 distance eps[b] of centers[i][b], in [0, 1].

    Restart 0 starts at the centre (the first step follows the gradient, i.e. the linearised worst
    case), the others at random points of the ball. Returns the best value found per sample and the
    corresponding images.
    """
    gen = torch.Generator().manual_seed(seed)
    b = centers[0].shape[0]
    view = (-1, 1, 1, 1)
    e = eps.float().view(view)
    best_val = torch.full((b,), -math.inf)
    best_z = [c.clone() for c in centers]
    for r in range(restarts):
        zs = []
        for c in centers:
            if r == 0:
                zs.append(c.clone())
            else:
                d = torch.randn(c.shape, generator=gen)
                d = d / d.flatten(1).norm(dim=1).view(view) * e * torch.rand((b, 1, 1, 1), generator=gen)
                zs.append((c + d).clamp(0, 1))
        for i in range(steps + 1):
            zs = [z.detach().requires_grad_(True) for z in zs]
            val = objective(zs)
            with torch.no_grad():
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                for k in range(len(zs)):
                    best_z[k][better] = zs[k][better].detach()
            if i == steps:
                break
            grads = torch.autograd.grad(val.sum(), zs)
            alpha = e * (0.02 + 0.5 * (1 + math.cos(math.pi * i / steps)) * 0.5)
            with torch.no_grad():
                new = []
                for z, g, c in zip(zs, grads, centers):
                    gn = g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(view)
                    z = z + alpha * gn
                    dlt = z - c
                    n = dlt.flatten(1).norm(dim=1).view(view)
                    z = (c + dlt * torch.clamp(e / n.clamp_min(1e-30), max=1.0)).clamp(0, 1)
                    new.append(z)
                zs = new
    for z, c in zip(best_z, centers):  # feasibility of what we report
        assert torch.all((z - c).flatten(1).norm(dim=1) <= eps.float() * (1 + 1e-5) + 1e-7)
        assert float(z.min()) >= 0 and float(z.max()) <= 1
    return best_val, best_z


def photo_triplets(size: int = 32, seed: int = 0):
    """Real photos with real distortions: ref, a noisy copy, and a blurred / shifted / jittered copy."""
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry"]
    gen = torch.Generator().manual_seed(seed)
    ref = torch.cat([real_photo(n, size) for n in names])
    x0 = (ref + 0.04 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    blur = torch.nn.functional.avg_pool2d(ref, 3, 1, 1, count_include_pad=False)
    shift = ref.roll(1, dims=3)
    jitter = (ref * 0.9 + 0.05).clamp(0, 1)
    x1 = torch.cat([blur[:2], shift[2:4], jitter[4:]])
    return ref, x0, x1


def flips_2afc(m, ref, x0, x1, closer):
    with torch.no_grad():
        d0, d1 = m(ref, x0), m(ref, x1)
    return (d1 < d0).long() != closer


def ref_attack(m, ref, x0, x1, cert, factor, **kw):
    """Strongest-effort flip of the certified decisions with the reference perturbed at factor·radius."""
    sel = cert.radius > 0
    one = cert.closer.bool().view(-1, 1, 1, 1)
    c_img, o_img = torch.where(one, x1, x0), torch.where(one, x0, x1)
    with torch.no_grad():
        ec, eo = m.embed(c_img), m.embed(o_img)

    def wrong_margin(zs):  # > 0 once the other image is closer
        e = m.embed_checked(zs[0])
        return ((e - ec).pow(2).sum(1) - (e - eo).pow(2).sum(1)) / 2

    eps = factor * cert.radius
    _, (adv,) = pgd_l2(wrong_margin, [ref], eps.clamp_min(1e-12), **kw)
    flipped = flips_2afc(m, adv, x0, x1, cert.closer) & sel
    return flipped, sel


@pytest.mark.parametrize("seed,user_size", [(0, 32), (1, 40)])
def test_ref_2afc_certificate_survives_strong_attacks(seed, user_size):
    m = tiny_lipsim(seed, conv_depth=2 + seed)
    ref, x0, x1 = photo_triplets(user_size, seed)
    cert = certify.two_afc(m, ref, x0, x1)
    assert int((cert.radius > 0).sum()) >= 4
    if user_size != 32:
        assert float(cert.lipschitz[0]) == pytest.approx(m.resize.norm((user_size, user_size)))
    # one attack batch: every triplet at 0.99 x its radius (must hold) and at 2.5 x (must flip some)
    n = ref.shape[0]
    cat = lambda t: torch.cat([t, t])  # noqa: E731
    both = certify.TwoAFCCertificate(**{**cert.__dict__, "radius": cat(cert.radius), "closer": cat(cert.closer)})
    factor = torch.cat([torch.full((n,), 0.99), torch.full((n,), 2.5)]).double()
    flipped, sel = ref_attack(m, cat(ref), cat(x0), cat(x1), both, factor)
    sel = sel[:n]
    assert not flipped[:n].any(), f"certificate broken at 0.99 x radius: {cert.radius[flipped[:n]]}"
    assert int(flipped[n:].sum()) >= 2, (cert.radius, cert.margin)  # the attack is strong beyond the radius
    # the library's APGD-CE (its own loss) at 0.99 x radius, per triplet
    from robustsim import attacks

    for i in torch.nonzero(sel).flatten().tolist()[:1]:
        adv = attacks.attack_2afc(m, ref[i:i + 1], x0[i:i + 1], x1[i:i + 1], cert.closer[i:i + 1], norm="l2",
                                  eps=0.99 * float(cert.radius[i]), method="apgd-ce", target="ref", steps=100,
                                  restarts=1, seed=seed)
        assert not flips_2afc(m, adv[0], x0[i:i + 1], x1[i:i + 1], cert.closer[i:i + 1]).any()


def test_candidate_2afc_certificates_survive_strong_attacks():
    m = tiny_lipsim(2)
    ref, x0, x1 = photo_triplets(32, 2)
    for pert in ("x1", "both"):  # ("x0" is the mirror image of "x1"; its closed form is checked exactly)
        cert = certify.two_afc(m, ref, x0, x1, perturbed=pert)
        sel = cert.radius > 0
        assert int(sel.sum()) >= 3
        with torch.no_grad():
            er = m.embed(ref)
        one = cert.closer.bool()

        def wrong_margin(zs):
            z0 = zs[0] if pert in ("x0", "both") else x0
            z1 = zs[-1] if pert in ("x1", "both") else x1
            e0, e1 = m.embed_checked(z0), m.embed_checked(z1)
            d0, d1 = (er - e0).pow(2).sum(1) / 2, (er - e1).pow(2).sum(1) / 2
            return torch.where(one, d1 - d0, d0 - d1)

        centers = {"x0": [x0], "x1": [x1], "both": [x0, x1]}[pert]
        for factor, expect_flip, kw in ((0.99, False, {}), (3.0, True, PROBE)):
            _, zs = pgd_l2(wrong_margin, centers, (factor * cert.radius).clamp_min(1e-12), **kw)
            a0 = zs[0] if pert in ("x0", "both") else x0
            a1 = zs[-1] if pert in ("x1", "both") else x1
            flipped = flips_2afc(m, ref, a0, a1, cert.closer) & sel
            if expect_flip:
                assert int(flipped.sum()) >= 1, (pert, cert.radius)
            else:
                assert not flipped.any(), (pert, cert.radius[flipped])


def test_distance_intervals_survive_strong_attacks():
    m = tiny_lipsim(3)
    ref, x0, x1 = photo_triplets(32, 3)
    x, y = ref, torch.cat([x0[:4], x1[4:]])
    with torch.no_grad():
        d = m(x, y)
        ey = m.embed(y)
    for pert, eps in (("x", 0.3), ("both", 0.1)):
        lo, hi = certify.distance_interval(m, x, y, eps, perturbed=pert)
        eps_t = torch.full((x.shape[0],), eps)
        for sign in (1.0, -1.0):
            def obj(zs):
                ex = m.embed_checked(zs[0])
                e2 = m.embed_checked(zs[1]) if pert == "both" else ey
                return sign * (ex - e2).pow(2).sum(1) / 2

            centers = [x, y] if pert == "both" else [x]
            _, zs = pgd_l2(obj, centers, eps_t, steps=100)
            with torch.no_grad():
                d_adv = m(zs[0], zs[1] if pert == "both" else y).double()
            assert torch.all(d_adv <= hi) and torch.all(d_adv >= lo), (pert, eps, sign)
            if sign > 0:
                # meaningful: the attack moves d a good part of the way to the bound
                assert float(((d_adv - d) / (hi - d)).max()) > 0.3


def test_threshold_and_top1_certificates_survive_strong_attacks():
    m = tiny_lipsim(4)
    ref, x0, x1 = photo_triplets(32, 4)
    with torch.no_grad():
        d = m(ref, x0)
    # thresholds: tau halfway between the clean distance and a moved one, both directions
    for tau in (float(d.median()),):  # samples on both sides: "<= tau" and "> tau" are both attacked
        th = certify.threshold(m, ref, x0, tau)
        sel = th.radius > 0
        assert sel.any()
        with torch.no_grad():
            e0 = m.embed(x0)
        sign = torch.where(th.decision, 1.0, -1.0)

        def cross(zs):  # > 0 once the decision flips
            dd = (m.embed_checked(zs[0]) - e0).pow(2).sum(1) / 2
            return sign * (dd - tau)

        assert th.decision[sel].any() and (~th.decision[sel]).any()
        for factor, expect, kw in ((0.99, False, {}), (3.0, True, PROBE)):
            _, (adv,) = pgd_l2(cross, [ref], (factor * th.radius).clamp_min(1e-12), **kw)
            with torch.no_grad():
                crossed = ((m(adv, x0) <= tau) != th.decision) & sel
            if expect:
                assert crossed.any(), tau
            else:
                assert not crossed.any(), (tau, th.radius[crossed])
    # top-1 retrieval: gallery of the clean photos and their distortions, queries = distorted photos
    gallery_imgs = torch.cat([ref, x1])
    with torch.no_grad():
        gallery = m.embed(gallery_imgs)
    q = x0
    res = certify.top1(m, q, gallery)
    sel = res.radius > 0
    assert int(sel.sum()) >= 3
    a = gallery[res.index]

    def steal(zs):  # > 0 once some other gallery item beats the certified top-1
        e = m.embed_checked(zs[0])
        s = e @ gallery.T
        own = (e * a).sum(1)
        s = s.masked_fill(torch.nn.functional.one_hot(res.index, gallery.shape[0]).bool(), -math.inf)
        return s.max(1).values - own

    for factor, expect, kw in ((0.99, False, {}), (3.0, True, PROBE)):
        _, (adv,) = pgd_l2(steal, [q], (factor * res.radius.float()).clamp_min(1e-12), **kw)
        with torch.no_grad():
            moved = (m.embed(adv) @ gallery.T).argmax(1) != res.index
        moved &= sel
        if expect:
            assert moved.any()
        else:
            assert not moved.any(), res.radius[moved]


class Shifted(nn.Module):
    """h(x) - b: still 1-Lipschitz; b chosen so that ||g(ref)|| is small (G < 1)."""

    def __init__(self, net: nn.Module, b: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("b", b)

    def forward(self, x):
        return self.net(x).flatten(1) - self.b


def test_paper_radius_is_broken_when_gnorm_below_one_while_ours_holds():
    m = tiny_lipsim(5)
    ref_all, x0, x1 = photo_triplets(32, 5)
    ref = ref_all[:1]
    with torch.no_grad():
        h = m.features(ref)[0]
    m.encoder = Shifted(m.encoder, h * (1 - 0.2 / h.norm()))  # ||g(ref)|| = 0.2
    # several candidate pairs around the one reference: its noisy copies and distortions
    gen = torch.Generator().manual_seed(0)
    c0 = torch.cat([(ref + s * torch.randn(ref.shape, generator=gen)).clamp(0, 1) for s in (0.02, 0.05, 0.08, 0.1)])
    c1 = torch.cat([x1[:1], ref.roll(1, dims=2), (ref * 0.95).clamp(0, 1), x0[:1]])
    refs = ref.expand(4, -1, -1, -1)
    cert = certify.two_afc(m, refs, c0, c1, float_error="measure")  # the shift makes g a small difference
    assert torch.allclose(cert.gnorm, torch.full((4,), 0.2, dtype=torch.float64), rtol=1e-3)
    sel = cert.radius > 0
    assert int(sel.sum()) >= 3
    assert torch.all(cert.paper_radius[sel] > 4 * cert.radius[sel])
    flipped_ours, _ = ref_attack(m, refs, c0, c1, cert, 0.99)
    assert not flipped_ours.any()
    # an actual perturbation inside the paper's radius flips certified-by-the-paper decisions
    paper_factor = 0.99 * cert.paper_radius / cert.radius.clamp_min(1e-30)  # per triplet
    flipped_paper, _ = ref_attack(m, refs, c0, c1, cert, paper_factor, **PROBE)
    assert flipped_paper.any(), (cert.paper_radius, cert.radius)


def test_shipped_model_certificates_survive_strong_attacks():
    """The certificates of the model users actually get (lipsim-default, real weights, real photos at its
    native 128×128) hold against the strongest attack here at 0.99 × the radius, and break beyond it."""
    import robustsim

    m = robustsim.load("lipsim-default").eval().requires_grad_(False)
    ref, x0, x1 = photo_triplets(128, seed=0)
    cert = certify.two_afc(m, ref, x0, x1)
    assert int((cert.radius > 0).sum()) >= 4
    n = ref.shape[0]
    cat = lambda t: torch.cat([t, t])  # noqa: E731
    both = certify.TwoAFCCertificate(**{**cert.__dict__, "radius": cat(cert.radius), "closer": cat(cert.closer)})
    factor = torch.cat([torch.full((n,), 0.99), torch.full((n,), 3.0)]).double()
    flipped, _ = ref_attack(m, cat(ref), cat(x0), cat(x1), both, factor, steps=100, restarts=2)
    assert not flipped[:n].any(), f"shipped certificate broken at 0.99 x radius: {cert.radius[flipped[:n]]}"
    assert int(flipped[n:].sum()) >= 1, cert.radius  # the attack does flip decisions once allowed to

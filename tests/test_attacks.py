"""Attacks: projections, the APGD schedule, exactness on models with a known optimum, 2AFC pairing,
invariants of every returned example, and bad input. Tiny models; the real-model checks are in
test_attacks_real.py."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustsim import attacks
from robustsim.attacks import engine
from robustsim.attacks.apgd import apgd_run
from robustsim.errors import InputError
from robustsim.metrics.base import Metric
from robustsim.metrics.embedding import EmbeddingMetric


def tiny_encoder(seed=0, out=16):
    g = torch.Generator().manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(8, out, 3, stride=2, padding=1),
                        nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    for p in enc.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.5
    return enc.eval()


def emb_metric(seed=0):
    return EmbeddingMetric(tiny_encoder(seed), input_size=None).eval()


class FeatureMetric(Metric):
    """A non-embedding metric (mean squared feature difference): exercises the generic path."""

    def __init__(self, seed=0):
        super().__init__()
        self.enc = tiny_encoder(seed)

    def distance(self, x, y):
        return (self.enc(x) - self.enc(y)).pow(2).mean(1)


class NoGradMetric(FeatureMetric):
    def distance(self, x, y):
        with torch.no_grad():
            return super().distance(x, y)


class QuantisedMetric(Metric):
    def distance(self, x, y):
        return ((x * 4).round() - (y * 4).round()).pow(2).flatten(1).mean(1)


def triplets(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    x0 = (ref + 0.15 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    x1 = (ref + 0.25 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return ref, x0, x1


# ---------------------------------------------------------------- projections


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 3.0))
def test_l2_projection_is_the_nearest_point_of_ball_and_box(seed, eps):
    """Variational inequality of a Euclidean projection onto a convex set: <v - p, q - p> <= 0 for every
    feasible q; also compare with scipy's constrained solver on a small instance."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(1, 1, 3, 2, 2, generator=g, dtype=torch.float64)
    z = c + 2 * torch.randn(c.shape, generator=g, dtype=torch.float64)
    p = engine.project(z, c, eps, "l2", iters=60)
    d = (p - c).flatten()
    assert float(d.norm()) <= eps * (1 + 1e-9) and float(p.min()) >= 0 and float(p.max()) <= 1
    # random feasible points
    q = c + torch.randn(200, 1, 3, 2, 2, generator=g, dtype=torch.float64)
    q = engine.project(q, c.expand_as(q), eps, "l2", iters=60)
    ip = ((z - p).flatten(1) * (q - p).flatten(1)).sum(1)
    assert float(ip.max()) <= 1e-9
    from scipy.optimize import minimize

    cf, zf = c.flatten().numpy(), z.flatten().numpy()
    cons = [{"type": "ineq", "fun": lambda u: eps ** 2 - np.sum((u - cf) ** 2)}]
    sol = minimize(lambda u: np.sum((u - zf) ** 2), np.clip(cf, 0, 1), bounds=[(0, 1)] * cf.size,
                   constraints=cons, method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    assert np.sum((p.flatten().numpy() - zf) ** 2) <= sol.fun + 1e-6


def test_projection_is_per_image_and_linf_is_a_clamp():
    g = torch.Generator().manual_seed(1)
    c = torch.rand(4, 2, 3, 5, 5, generator=g)
    z = c + torch.randn(c.shape, generator=g)
    p = engine.project(z, c, 0.7, "l2")
    n = (p - c).flatten(2).norm(dim=2)
    assert torch.allclose(n, torch.full_like(n, 0.7), atol=1e-4)  # each image on its own sphere
    p = engine.project(z, c, 0.1, "linf")
    assert float((p - c).abs().max()) <= 0.1 + 1e-6
    torch.testing.assert_close(p, torch.min(torch.max(z, c - 0.1), c + 0.1).clamp(0, 1))


# ---------------------------------------------------------------- APGD schedule


def _reference_checkpoints(n):
    """pyautoattack's checkpoint rule (counter reaching k, k shrinking to n_iter_min), simulated."""
    from pyautoattack.autopgd_base import APGDAttack

    a = APGDAttack(lambda t: t, n_iter=n, eps=0.1)
    k, c, out = a.n_iter_2, 0, []
    for i in range(n):
        c += 1
        if c == k:
            out.append(i + 1)
            k = max(k - a.size_decr, a.n_iter_min)
            c = 0
    return out


@pytest.mark.parametrize("n", [100, 200, 300])
def test_checkpoints_match_autoattack(n):
    assert attacks.checkpoints(n) == _reference_checkpoints(n)


def _counting_objective(values):
    """Loss = values[call number] for every row, gradient along a fixed direction."""
    calls = {"n": 0}

    def obj(z, idx):
        v = values(calls["n"])
        calls["n"] += 1
        return z.flatten(1).sum(1) * 0 + v + 1e-3 * z.flatten(1)[:, 0], None

    return obj


def _trace(values, steps=100):
    c = torch.full((2, 1, 3, 4, 4), 0.5)
    tr = []
    apgd_run(_counting_objective(values), c, 0.1, "linf", steps, torch.Generator().manual_seed(0), trace=tr)
    return tr


def test_step_halves_when_loss_oscillates_and_never_when_it_keeps_improving():
    tr = _trace(lambda k: float(k % 2))  # increases in half of the steps (< rho = 0.75)
    assert all(bool(r.all()) for _, _, r in tr)
    assert torch.allclose(tr[-1][1], torch.full((2,), 0.2 / 2 ** len(tr)))
    tr = _trace(lambda k: float(k))  # always increasing, best always improving
    assert not any(bool(r.any()) for _, _, r in tr)
    assert torch.allclose(tr[-1][1], torch.full((2,), 0.2))


def test_step_halves_when_best_loss_stalls_unless_just_halved():
    # a high first loss, then increases every step that never reach it: condition 1 never fires, condition 2
    # fires when the step was not halved at the previous checkpoint
    tr = _trace(lambda k: 100.0 if k == 0 else 1e-3 * k)
    halved = [bool(r.all()) for _, _, r in tr]
    assert halved == [True, False] * (len(tr) // 2) + [True] * (len(tr) % 2)


# ---------------------------------------------------------------- exactness on linear models


class Linear2(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        f = x.flatten(1) @ self.w + self.b
        return torch.stack([f, torch.zeros_like(f)], 1)


@pytest.mark.parametrize("norm,eps", [("l2", 0.3), ("linf", 0.03)])
@pytest.mark.parametrize("method", ["apgd", "pgd"])
def test_flips_exactly_the_points_within_reach_of_a_linear_boundary(norm, eps, method):
    g = torch.Generator().manual_seed(0)
    d = 3 * 6 * 6
    w = torch.randn(d, generator=g)
    b = -0.5 * float(w.sum())
    t = torch.linspace(-2 * eps, 2 * eps, 41)
    t = t[(t.abs() - eps).abs() > 0.03 * eps]  # stay clear of the boundary case
    direction = w / w.norm() if norm == "l2" else w.sign()  # distance to the hyperplane = |t|
    x = (0.5 + t[:, None] * direction[None]).reshape(-1, 3, 6, 6)
    model = Linear2(w, b)
    fn = attacks.apgd if method == "apgd" else attacks.pgd
    res = fn(model, x, None, norm=norm, eps=eps, steps=30, return_result=True)
    assert torch.equal(res.success, t.abs() < eps)
    delta = (res.x_adv[:, 0] - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    pred = model(res.x_adv[:, 0]).argmax(1)
    assert torch.equal(pred != model(x).argmax(1), res.success)


def test_broken_samples_leave_the_batch():
    """Attack only the still-unbroken samples: rows evaluated per call shrink as samples flip."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, generator=g).sign()
    x = (0.5 + torch.tensor([0.01, -0.01, 2.0, -2.0])[:, None] * (w / w.norm())[None]).reshape(4, 3, 4, 4)
    rows = []

    class Counting(Linear2):
        def forward(self, z):
            rows.append(z.shape[0])
            return super().forward(z)

    m = Counting(w, -0.5 * float(w.sum()))
    res = attacks.apgd(m, x, None, norm="l2", eps=0.5, steps=20, return_result=True)
    assert res.success.tolist() == [True, True, False, False]
    assert max(rows[3:]) == 2 and rows[-1] == 2  # after the first iterations only the two far samples remain


def test_seeded_and_deterministic():
    m = emb_metric()
    ref, x0, x1 = triplets()
    a = attacks.attack_2afc(m, ref, x0, x1, None, eps=0.5, steps=10, seed=3)
    b = attacks.attack_2afc(m, ref, x0, x1, None, eps=0.5, steps=10, seed=3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# ---------------------------------------------------------------- 2AFC threat model


@pytest.mark.parametrize("target", ["ref", "x0", "x1", "x0+x1"])
@pytest.mark.parametrize("norm,eps", [("l2", 0.8), ("linf", 4 / 255)])
def test_2afc_invariants(target, norm, eps):
    m = FeatureMetric()
    ref, x0, x1 = triplets(5)
    res = attacks.run_2afc(m, ref, x0, x1, None, norm=norm, eps=eps, target=target, steps=15)
    outs = {"ref": (res.ref, ref), "x0": (res.x0, x0), "x1": (res.x1, x1)}
    perturbed = {"ref": ["ref"], "x0": ["x0"], "x1": ["x1"], "x0+x1": ["x0", "x1"]}[target]
    for name, (adv, clean) in outs.items():
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
        delta = (adv - clean).flatten(1)
        if name not in perturbed:
            assert torch.equal(adv, clean)
        else:  # each perturbed image has its own budget
            size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
            assert float(size.max()) <= eps * (1 + 1e-5)
    with torch.no_grad():
        d0, d1 = m(res.ref, res.x0), m(res.ref, res.x1)
    torch.testing.assert_close(d0, res.adv_d0)
    torch.testing.assert_close(res.flipped, torch.where(res.label == 0, d1 < d0, d0 < d1))
    # the attack's loss moves the right way for every triplet (CE of the clean label up = margin down)
    clean_margin = torch.where(res.label == 0, res.clean_d1 - res.clean_d0, res.clean_d0 - res.clean_d1)
    adv_margin = torch.where(res.label == 0, d1 - d0, d0 - d1)
    assert bool((adv_margin < clean_margin).all())


def test_2afc_never_mispairs_a_triplet_when_samples_leave_the_batch():
    """Every metric call sees a perturbed reference next to the x0/x1 of its own triplet."""
    n = 8
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(n, 3, 8, 8, generator=g)
    x0 = (ref + 0.05 * torch.arange(1, n + 1).view(n, 1, 1, 1) * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    x1 = (ref + 0.3 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    calls = []

    class Recording(FeatureMetric):
        def distance(self, a, b):
            calls.append((a.detach().clone(), b.detach().clone()))
            return super().distance(a, b)

    m = Recording()
    eps = 0.2
    res = attacks.run_2afc(m, ref, x0, x1, None, eps=eps, steps=20)
    assert 0 < int(res.flipped.sum()) < n  # some leave early, some stay: the slicing path is exercised
    sizes = set()
    for a, b in calls[1:]:
        k = a.shape[0] // 2
        sizes.add(k)
        for r_adv, xa, xb in zip(a[:k], b[:k], b[k:]):
            j = int(((x0 - xa).flatten(1).abs().amax(1) == 0).nonzero()[0])
            assert torch.equal(x1[j], xb)
            assert float((r_adv - ref[j]).norm()) <= eps * (1 + 1e-5)
    assert len(sizes) > 1


def test_embedding_fast_path_equals_the_metric_call():
    m = emb_metric()
    ref, x0, x1 = triplets(4)
    for target in ("ref", "x0+x1"):
        t = attacks.TwoAFCThreat(m, ref, x0, x1, None, target)
        z = (t.center() + 0.05).clamp(0, 1)
        idx = torch.tensor([2, 0, 3, 1])
        fast = t.logits(z, idx)
        t._embed = None
        torch.testing.assert_close(fast, t.logits(z, idx), atol=1e-6, rtol=1e-5)


def test_label_decides_the_direction_and_custom_losses_work():
    m = emb_metric()
    ref, x0, x1 = triplets(4)
    t = attacks.TwoAFCThreat(m, ref, x0, x1)
    wrong = 1 - t.clean_decision  # asking to "flip" a decision that already disagrees: success at once
    res = attacks.run_2afc(m, ref, x0, x1, wrong, eps=0.1, steps=5)
    assert bool(res.flipped.all())
    seen = []

    def loss(logits, y):
        seen.append(logits.shape)
        return logits[:, 1 - y[0]] - logits[:, y[0]]

    res = attacks.run_2afc(m, ref, x0, x1, torch.zeros(4, dtype=torch.long), eps=0.5, steps=5, loss=loss)
    assert seen and all(s[1] == 2 for s in seen)
    res2 = attacks.run_2afc(m, ref, x0, x1, torch.zeros(4, dtype=torch.long), eps=0.5, steps=5, loss="margin")
    assert res2.ref.shape == ref.shape


def test_early_stop_off_keeps_pushing_flipped_triplets():
    m = emb_metric()
    ref, x0, x1 = triplets(4)
    a = attacks.run_2afc(m, ref, x0, x1, None, eps=2.0, steps=20)
    b = attacks.run_2afc(m, ref, x0, x1, None, eps=2.0, steps=20, early_stop=False)
    ma = torch.where(a.label == 0, a.adv_d1 - a.adv_d0, a.adv_d0 - a.adv_d1)
    mb = torch.where(b.label == 0, b.adv_d1 - b.adv_d0, b.adv_d0 - b.adv_d1)
    assert bool(a.flipped.any())
    assert bool((mb[a.flipped] < ma[a.flipped]).all())


# ---------------------------------------------------------------- pair and embedding attacks


@pytest.mark.parametrize("method", ["apgd", "pgd"])
def test_pair_attack_moves_the_distance_both_ways(method):
    m = FeatureMetric()
    ref, x0, _ = triplets(4)
    up = attacks.run_pair(m, ref, x0, "up", "x", eps=0.5, method=method, steps=15)
    down = attacks.run_pair(m, ref, x0, "down", "both", eps=0.5, method=method, steps=15)
    assert bool((up.adv_d > up.clean_d).all()) and bool((down.adv_d < down.clean_d).all())
    assert torch.equal(up.y, x0)
    assert float((down.y - x0).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    tau = float(up.clean_d.max()) * 1.01
    thr = attacks.run_pair(m, ref, x0, "up", eps=0.5, method=method, steps=15, threshold=tau)
    torch.testing.assert_close(thr.success, thr.adv_d > tau)


def test_embedding_attack_beats_random_noise_of_the_same_size():
    m = emb_metric()
    x = triplets(4)[0]
    x_adv, d = attacks.embedding_attack(m, x, eps=1.0, steps=20)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    torch.testing.assert_close(d, m(x, x_adv))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    noisy = engine.project(x[:, None] + noise[:, None], x[:, None], 1.0, "l2")[:, 0]
    assert bool((d > 2 * m(x, noisy)).all())


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw,msg", [
    ({"eps": 0.0}, "> 0"), ({"eps": -1.0}, "> 0"), ({"eps": float("nan")}, "finite"),
    ({"eps": float("inf")}, "finite"), ({"eps": 1e4}, "diameter"), ({"eps": 2.0, "norm": "linf"}, "diameter"),
    ({"norm": "l1"}, "norm"), ({"method": "fab"}, "method"), ({"target": "both"}, "target"),
    ({"loss": "dlr"}, "loss"), ({"steps": 0}, "steps"), ({"label": torch.tensor([0, 1, 2, 0])}, "0 (x0 is closer)"),
    ({"label": torch.tensor([0, 1])}, "shape"), ({"label": torch.tensor([0.0, 0.5, 1.0, 1.0])}, "0 (x0 is closer)"),
])
def test_bad_arguments_are_named(kw, msg):
    m = emb_metric()
    ref, x0, x1 = triplets(4)
    kw = dict(kw)
    label = kw.pop("label", None)
    with pytest.raises(InputError, match=re_escape(msg)):
        attacks.attack_2afc(m, ref, x0, x1, label, **{"steps": 2, **kw})


def re_escape(s):
    import re

    return re.escape(s)


def test_bad_images_and_shapes():
    m = emb_metric()
    ref, x0, x1 = triplets(4)
    with pytest.raises(InputError, match="shape mismatch"):
        attacks.attack_2afc(m, ref, x0[:3], x1, steps=2)
    with pytest.raises(InputError, match="shape mismatch"):
        attacks.attack_2afc(m, ref, x0[..., :8, :8], x1, steps=2)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        attacks.attack_2afc(m, ref * 255, x0, x1, steps=2)
    with pytest.raises(InputError, match="shape mismatch"):
        attacks.attack_pair(m, ref, x0[:2], steps=2)
    with pytest.raises(InputError, match="labels must"):
        attacks.apgd(Linear2(torch.ones(48), 0.0), ref[:, :, :4, :4], torch.tensor([0, 1, 5, 0]), steps=2)


@pytest.mark.parametrize("metric", [NoGradMetric(), QuantisedMetric()])
def test_a_metric_without_gradient_is_an_error_not_a_silent_zero_step(metric):
    ref, x0, x1 = triplets(4)
    with pytest.raises(InputError, match="gradient"):
        attacks.attack_2afc(metric, ref, x0, x1, eps=0.5, steps=3)
    with pytest.raises(InputError, match="gradient"):
        attacks.attack_pair(metric, ref, x0, eps=0.5, steps=3)

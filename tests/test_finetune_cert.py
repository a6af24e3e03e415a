"""The certified hinge of the fine-tuning recipe (loss.cert_eps) agrees with the 2AFC certificate."""
from __future__ import annotations

import pytest
import torch

from robustsim import certify
from robustsim.errors import InputError
from robustsim.metrics.lipsim import LipSim
from robustsim.train.finetune import FinetuneRecipe

from test_train_support import tiny_config


def _tiny_lipsim(seed: int) -> LipSim:
    torch.manual_seed(seed)
    return LipSim(input_size=32, stem="unshuffle2", channels=12, conv_depth=2, conv_inner=8, kernel_size=3,
                  pool=(2,), linear_depth=2, linear_inner=32, embed_dim=64).eval()


def _recipe(tmp_path, margin: float, cert_eps: float) -> FinetuneRecipe:
    cfg = tiny_config("finetune", tmp_path / "ft", loss__margin=margin, loss__cert_eps=cert_eps)
    return FinetuneRecipe(cfg)


def _triplets(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, 32, 32, generator=g)
    x0 = (ref + 0.15 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    x1 = (ref + 0.15 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return ref, x0, x1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_certified_hinge_means_certified_at_eps(tmp_path, seed):
    """Per triplet (margin 0): loss == 0 exactly when certify.two_afc's exact radius reaches cert_eps.

    Exact = without the float-error allowance (float_error=0); the sound default radius is smaller by
    that allowance, so training at cert_eps certifies a little less than cert_eps."""
    metric = _tiny_lipsim(seed)
    ref, x0, x1 = _triplets(48, seed)
    cert = certify.two_afc(metric, ref, x0, x1, float_error=0.0)
    assert (certify.two_afc(metric, ref, x0, x1).radius <= cert.radius).all()
    eps = float(cert.radius.median())  # half the triplets on each side
    assert eps > 0
    judge = cert.closer.float()  # the metric's own decision is the label: only the radius matters
    recipe = _recipe(tmp_path, margin=0.0, cert_eps=eps)
    losses = []
    with torch.no_grad():
        for i in range(ref.shape[0]):
            loss, logs = recipe.loss(metric, (ref[i:i + 1], x0[i:i + 1], x1[i:i + 1], judge[i:i + 1]))
            losses.append(float(loss))
            assert logs["cert_acc"] == float(loss == 0)
    losses = torch.tensor(losses)
    r = cert.radius.float()
    clear = (r - eps).abs() > 1e-4 * eps  # away from the boundary (float32 loss vs float64 certificate)
    assert clear.sum() >= 40
    assert torch.equal((losses == 0)[clear], (r >= eps)[clear])
    assert (losses > 0).any() and (losses == 0).any()


def test_cert_eps_zero_is_the_plain_hinge(tmp_path):
    metric = _tiny_lipsim(3)
    ref, x0, x1 = _triplets(16, 3)
    judge = torch.rand(16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain, logs = _recipe(tmp_path, 0.05, 0.0).loss(metric, (ref, x0, x1, judge))
        e = metric.embed(torch.cat([ref, x0, x1]))
        d0 = (e[:16] - e[16:32]).pow(2).sum(1) / 2
        d1 = (e[:16] - e[32:]).pow(2).sum(1) / 2
        near, far = torch.where(judge > 0.5, d1, d0), torch.where(judge > 0.5, d0, d1)
        expected = torch.relu(0.05 - (far - near)).mean()
        certified, _ = _recipe(tmp_path, 0.05, 0.5).loss(metric, (ref, x0, x1, judge))
    assert "cert_acc" not in logs
    assert float(plain) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert float(certified) > float(plain)  # the certificate asks for more margin


def test_cert_eps_is_validated(tmp_path):
    with pytest.raises(InputError, match="cert_eps must be >= 0"):
        _recipe(tmp_path, 0.05, -0.1).setup(None)
    recipe = _recipe(tmp_path, 0.05, 0.5)
    recipe.cfg.model.name = "effnet-lite0-cosine"
    recipe.cfg.model.arch = {}
    with pytest.raises(InputError, match="needs a Lipschitz"):
        recipe.build(torch.device("cpu"))


def test_agreement_weight_counts_split_votes_less(tmp_path):
    """loss.agreement_weight: each hinge is weighted by |2j - 1|, so a tie (j = 0.5) teaches nothing and a
    unanimous triplet counts five times a 3-of-5 one; with only unanimous labels it is the plain mean."""
    metric = _tiny_lipsim(4)
    ref, x0, x1 = _triplets(8, 4)
    judge = torch.tensor([0.0, 1.0, 0.4, 0.6, 0.5, 0.8, 0.2, 1.0])
    plain = _recipe(tmp_path, 0.5, 0.0)
    weighted = _recipe(tmp_path, 0.5, 0.0)
    weighted.cfg.loss.agreement_weight = True
    with torch.no_grad():
        per = torch.stack([plain.loss(metric, (ref[i:i + 1], x0[i:i + 1], x1[i:i + 1], judge[i:i + 1]))[0]
                           for i in range(8)])
        got, _ = weighted.loss(metric, (ref, x0, x1, judge))
        unanimous = [0, 1, 7]
        same, _ = weighted.loss(metric, (ref[unanimous], x0[unanimous], x1[unanimous], judge[unanimous]))
        mean, _ = plain.loss(metric, (ref[unanimous], x0[unanimous], x1[unanimous], judge[unanimous]))
    assert (per > 0).all()  # margin 0.5: every triplet is inside the hinge, so the weights matter
    w = (2 * judge - 1).abs()
    assert float(got) == pytest.approx(float((w * per).sum() / w.sum()), rel=1e-5)
    assert float(got) != pytest.approx(float(per.mean()), rel=1e-3)
    assert float(same) == pytest.approx(float(mean), rel=1e-6)


@pytest.mark.parametrize("seed", [5, 6])
def test_radius_hinge_is_the_hinge_on_the_exact_certified_radius(tmp_path, seed):
    """loss.radius_hinge: per triplet, max(0, ε - r) with r certify.two_afc's exact radius (float_error 0),
    signed: a triplet the metric orders against its label has r < 0 and pays ε + |r|. The margin is unused."""
    metric = _tiny_lipsim(seed)
    ref, x0, x1 = _triplets(24, seed)
    cert = certify.two_afc(metric, ref, x0, x1, float_error=0.0)
    eps = float(cert.radius.median())
    recipe = _recipe(tmp_path, margin=0.3, cert_eps=eps)
    recipe.cfg.loss.radius_hinge = True
    own = cert.closer.float()  # label = the metric's own decision: radius r >= 0
    with torch.no_grad():
        agree = torch.stack([recipe.loss(metric, (ref[i:i + 1], x0[i:i + 1], x1[i:i + 1], own[i:i + 1]))[0]
                             for i in range(24)])
        against = torch.stack([recipe.loss(metric, (ref[i:i + 1], x0[i:i + 1], x1[i:i + 1], 1 - own[i:i + 1]))[0]
                               for i in range(24)])
    r = cert.radius.float()
    assert torch.allclose(agree, torch.relu(eps - r), rtol=1e-4, atol=1e-6 * eps)
    assert torch.allclose(against, eps + r, rtol=1e-4, atol=1e-6 * eps)
    assert (agree == 0).any() and (agree > 0).any()


def test_radius_hinge_has_no_collapsed_minimum(tmp_path):
    """A constant embedding (every image at one point) is a zero of the margin-free certified hinge, which
    is why that hinge collapses in training; the radius hinge charges it the full ε on every triplet."""
    metric = _tiny_lipsim(7)
    ref, x0, x1 = _triplets(8, 7)
    judge = torch.ones(8)
    same = torch.rand(1, 3, 32, 32).expand(8, -1, -1, -1)
    recipe = _recipe(tmp_path, margin=0.0, cert_eps=0.5)
    with torch.no_grad():
        collapsed_cert, _ = recipe.loss(metric, (same, same, same, judge))
        recipe.cfg.loss.radius_hinge = True
        collapsed_radius, _ = recipe.loss(metric, (same, same, same, judge))
    assert float(collapsed_cert) == 0.0
    assert float(collapsed_radius) == pytest.approx(0.5)


def test_radius_hinge_needs_a_radius(tmp_path):
    recipe = _recipe(tmp_path, 0.0, 0.0)
    recipe.cfg.loss.radius_hinge = True
    with pytest.raises(InputError, match="radius_hinge needs loss.cert_eps > 0"):
        recipe.setup(None)


def test_model_arch_beside_name_reconfigures_the_loaded_weights(tmp_path):
    """model.name + model.arch: the saved weights under a shape-preserving change (here every coordinate of
    the dense layers instead of the first 64); a change of any parameter's shape is refused by name."""
    from robustsim import hub

    path = hub.save(_tiny_lipsim(0), tmp_path / "tiny.safetensors")
    recipe = _recipe(tmp_path, 0.0, 0.5)
    recipe.cfg.model.name, recipe.cfg.model.arch = str(path), {"embed_dim": 192}
    wide = recipe.build(torch.device("cpu"))
    base = _tiny_lipsim(0)
    assert wide.config()["embed_dim"] == 192 and base.config()["embed_dim"] == 64
    for k, t in base.state_dict().items():
        torch.testing.assert_close(wide.state_dict()[k], t)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full, kept = wide.raw_features(x), base.raw_features(x)
    torch.testing.assert_close(full[:, :64], kept)  # the first 64 coordinates are the old embedding
    recipe.cfg.model.arch = {"linear_inner": 16}
    with pytest.raises(InputError, match="changes parameter 'encoder.linears"):
        recipe.build(torch.device("cpu"))


def _adv_recipe(tmp_path, eps: float, adv_eps: float, steps: int = 3, weight: float = 1.0) -> FinetuneRecipe:
    recipe = _recipe(tmp_path, 0.0, eps)
    lc = recipe.cfg.loss
    lc.radius_hinge, lc.adv_eps, lc.adv_steps, lc.adv_weight = True, adv_eps, steps, weight
    return recipe


@pytest.mark.parametrize("bad, match", [({"adv_eps": 0.5}, "needs loss.radius_hinge"),
                                         ({"radius_hinge": True, "adv_eps": -0.1}, "adv_eps"),
                                         ({"radius_hinge": True, "adv_eps": 0.5, "adv_steps": 0}, "adv_steps"),
                                         ({"radius_hinge": True, "adv_eps": 0.5, "adv_demand": -0.1}, "adv_demand"),
                                         ({"radius_hinge": True, "adv_eps": 0.5, "adv_target": "label"}, "adv_target")])
def test_adversarial_radius_hinge_refuses_bad_settings(tmp_path, bad, match):
    recipe = _recipe(tmp_path, 0.0, 0.5)
    for k, v in bad.items():
        setattr(recipe.cfg.loss, k, v)
    with pytest.raises(InputError, match=match):
        recipe.setup(None)


def test_attacked_reference_stays_in_budget_and_lowers_the_radius_more_than_noise(tmp_path):
    metric = _tiny_lipsim(8)
    ref, x0, x1 = _triplets(16, 8)
    ref = 0.25 + 0.5 * ref  # room inside [0, 1] for the budget
    cert = certify.two_afc(metric, ref, x0, x1, float_error=0.0)
    near = cert.closer.bool()  # the metric's own decision: every radius starts >= 0
    recipe = _adv_recipe(tmp_path, 0.1, 0.3)
    with torch.no_grad():
        e0, e1 = metric.embed(x0), metric.embed(x1)
    moved = recipe.attack_reference(metric, ref, e0, e1, near, 1.0)
    delta = (moved - ref).flatten(1).norm(dim=1)
    assert bool((delta <= 0.3 * (1 + 1e-5)).all()) and bool((delta > 0.29).all())
    assert float(moved.min()) >= 0 and float(moved.max()) <= 1
    noise = torch.randn_like(ref)
    noise = ref + 0.3 * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        r = {k: recipe._radius(metric.raw_features(t), e0, e1, near, 1.0) for k, t in
             (("clean", ref), ("attacked", moved), ("noise", noise))}
    torch.testing.assert_close(r["clean"].double(), cert.radius, rtol=1e-4, atol=1e-6)
    assert bool((r["attacked"] < r["clean"]).all())
    assert bool((r["attacked"] < r["noise"]).all())


def test_adversarial_radius_hinge_adds_the_hinge_at_the_attacked_reference_and_keeps_the_attack_out_of_the_gradients(tmp_path):
    """loss = mean(max(0, ε - r(ref)) + w·max(0, ε - r(ref + δ))), δ the (deterministic) PGD result, and its
    parameter gradients are those of that formula with δ fixed: the attack's own backward passes add nothing."""
    metric = _tiny_lipsim(9).train()
    ref, x0, x1 = _triplets(8, 9)
    judge = torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 0])
    eps = 0.4
    recipe = _adv_recipe(tmp_path, eps, 0.2, steps=2, weight=0.7)
    metric.zero_grad()
    loss, logs = recipe.loss(metric, (ref, x0, x1, judge))  # any gradient its attack left would stay in .grad
    loss.backward()
    got = [p.grad.clone() for p in metric.parameters()]

    near = judge > 0.5
    metric.zero_grad()
    g = metric.raw_features(torch.cat([x0, x1]))
    e0, e1 = torch.nn.functional.normalize(g, dim=1).chunk(2)
    moved = recipe.attack_reference(metric, ref, e0, e1, near, 1.0)
    metric.zero_grad()
    g = metric.raw_features(torch.cat([ref, x0, x1]))
    e0, e1 = torch.nn.functional.normalize(g[8:], dim=1).chunk(2)
    clean = recipe._radius(g[:8], e0, e1, near, 1.0)
    attacked = recipe._radius(metric.raw_features(moved), e0, e1, near, 1.0)
    want = (torch.relu(eps - clean) + 0.7 * torch.relu(eps - attacked)).mean()
    want.backward()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert (attacked < clean).all() and float(want) > float(torch.relu(eps - clean).mean())
    for a, b in zip(got, (p.grad for p in metric.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert logs["adv_acc"] == float((attacked >= eps).float().mean())


@pytest.mark.parametrize("target", ["judges", "own"])
def test_adversarial_radius_hinge_asks_adv_demand_for_the_chosen_decision(tmp_path, target):
    """With loss.adv_demand = a: loss = mean(max(0, ε - r(ref)) + w·max(0, a - r(ref + δ))), the attacked radius
    signed by the judges' decision or, with adv_target "own", by the network's clean one; adv_acc counts the
    attacked radii that reach a, not ε."""
    metric = _tiny_lipsim(10).train()
    ref, x0, x1 = _triplets(8, 10)
    eps, demand = 0.4, 0.05
    with torch.no_grad():
        g = metric.raw_features(torch.cat([ref, x0, x1]))
        er, e0, e1 = torch.nn.functional.normalize(g, dim=1).chunk(3)
        own = (er - e1).pow(2).sum(1) < (er - e0).pow(2).sum(1)
    judge = (~own).float()  # the judges disagree with the network on every triplet
    recipe = _adv_recipe(tmp_path, eps, 0.2, steps=2, weight=0.7)
    recipe.cfg.loss.adv_demand, recipe.cfg.loss.adv_target = demand, target
    loss, logs = recipe.loss(metric, (ref, x0, x1, judge))
    near = judge > 0.5
    side = near if target == "judges" else own
    moved = recipe.attack_reference(metric, ref, e0, e1, side, 1.0)
    with torch.no_grad():
        clean = recipe._radius(g[:8], e0, e1, near, 1.0)
        attacked = recipe._radius(metric.raw_features(moved), e0, e1, side, 1.0)
    want = (torch.relu(eps - clean) + 0.7 * torch.relu(demand - attacked)).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(want) != pytest.approx(float((torch.relu(eps - clean) + 0.7 * torch.relu(eps - attacked)).mean()))
    assert logs["adv_acc"] == float((attacked >= demand).float().mean())
    assert bool((clean < 0).all())  # the judges' side is the network's wrong one: the two targets differ everywhere

"""LipSim step 2: fine-tune an embedding metric on 2AFC triplets with the hinge loss (DESIGN §3.4).

With unit embeddings and d = 1 - cos, for each triplet the human-preferred ("near") image should be
closer to the reference than the other ("far") one by a margin m:

    loss = max(0, m - (d(ref, far) - d(ref, near)))

m = 0.5 for LipSim, 0.05 for DreamSim (``loss.margin``).

Certified hinge (ours, ``loss.cert_eps`` = ε > 0, Lipschitz metrics only). The plain hinge is blind to
the scale of the raw features g, yet robustness is not: the exact 2AFC certificate
(:func:`robustsim.certify.two_afc`) keeps a decision for every l2 perturbation of the reference of
size < G·M/(K·C), with G = ||g(ref)||, M = d(ref, far) - d(ref, near), C = ||e_far - e_near|| and K
the Lipschitz constant. Asking that radius to exceed ε is the same as asking M >= ε·K·C/G, so

    loss = max(0, m + ε·K·C/G - M)

trains the margin the certificate needs (the Lipschitz-margin idea of Tsuzuku et al. 2018 applied to
the cosine 2AFC geometry). With ε = 0 it is the plain hinge.

Radius hinge (``loss.radius_hinge``, needs ε > 0): ``loss = max(0, ε - G·M/(K·C))``, the hinge on the
certified radius itself, in l2 pixel units, with no margin in 1 - cos. Why: the certified hinge asks for a
radius of ε + m·G/(K·C), and for a 1-Lipschitz g the margin's part is pixels more than most triplets allow
(for ``lipsim-effnet``, G ≈ 8.4 and C ≈ 0.08: m = 0.05 asks for about 5, the median distance of the far
image); g can only meet it by shrinking G, which is what costs robustness. The radius has no such scale,
and no constant g minimises it (a collapsed g has radius 0). Dropping the margin from the certified hinge
instead (m = 0) does collapse: every hinge then vanishes as C -> 0.

Adversarial radius hinge (``loss.adv_eps`` > 0, with the radius hinge): the same hinge again at a reference
moved by ``adv_steps`` l2 PGD steps (budget adv_eps) that lower its radius, weighted by ``adv_weight``, asking
for a radius of ``adv_demand`` there (default ε). Why: the certified radius assumes the network stretches a
perturbation by its Lipschitz constant in every direction, so the radius hinge cannot see how much less an
attacker actually gets; this term can, and it pays the network for contracting the directions attacks use.
With ``adv_target: own`` the attacked term keeps the network's own clean decision instead of the judges' (the
TRADES idea, Zhang et al. 2019): the clean term alone then teaches the ordering, and the attacked one asks only
for stability, so on a triplet the network misorders the two terms do not pull the same way twice. The
attack's steps differentiate only through the perturbation (``torch.autograd.grad``), never into the parameters'
gradients.

The judgment j (fraction preferring x1) picks near = x1 when j > 0.5, else x0; with
``loss.agreement_weight`` each triplet's hinge is weighted by |2j - 1|, so triplets the judges split on
(soft labels from ``consensus_only: false``) count less. Any embedding metric can be fine-tuned (a LipSim
saved by the distillation recipe, a hub model, or a fresh ``model.arch``; ``model.arch`` beside
``model.name`` changes the loaded model's configuration, see :func:`with_config`); the result is saved as a
robustsim ``.safetensors`` file.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..metrics.embedding import NORM_EPS
from .common import Recipe
from .config import RecipeConfig


def reconfigure(metric: nn.Module, overrides: dict):
    """A new model of ``type(metric)`` with ``metric.config()`` updated by ``overrides``, holding every parameter
    of ``metric`` whose name and shape it shares; the rest keep the new model's initialisation.

    Returns (model, kept names, names that differ: in only one of the two or of another shape)."""
    if not hasattr(metric, "config"):
        raise InputError(f"model.arch with model.name needs a configurable metric; {type(metric).__name__} is not one")
    new = type(metric)(**{**metric.config(), **overrides})
    want, have = new.state_dict(), metric.state_dict()
    kept = [k for k, v in want.items() if k in have and have[k].shape == v.shape]
    differ = sorted((set(want) | set(have)) - set(kept))
    new.load_state_dict({k: have[k] for k in kept}, strict=False)
    new.name = getattr(metric, "name", "")
    return new.train(metric.training), kept, differ


def with_config(metric: nn.Module, overrides: dict) -> nn.Module:
    """The same weights under a changed configuration (``model.name`` and ``model.arch`` together): e.g.
    ``{embed_dim: 3072}`` keeps every coordinate a LipSim computes instead of the first 1280. Only changes
    that keep every parameter's shape can start from saved weights; others are refused, naming the key."""
    new, _, differ = reconfigure(metric, overrides)
    if differ:
        raise InputError(f"model.arch {overrides} changes parameter {differ[0]!r} of {type(metric).__name__}: only "
                         "changes that keep every parameter's shape can start from saved weights")
    return new


class FinetuneRecipe(Recipe):
    """Hinge-loss fine-tuning of an embedding metric on 2AFC triplets; see the module docstring."""

    name = "finetune"

    def __init__(self, cfg: RecipeConfig):
        super().__init__(cfg)
        self._data = None

    def setup(self, dist) -> None:
        from .data import build_triplets

        if self.cfg.loss.margin < 0:
            raise InputError(f"loss.margin must be >= 0, got {self.cfg.loss.margin}")
        if self.cfg.loss.cert_eps < 0:
            raise InputError(f"loss.cert_eps must be >= 0, got {self.cfg.loss.cert_eps}")
        if self.cfg.loss.radius_hinge and self.cfg.loss.cert_eps <= 0:
            raise InputError("loss.radius_hinge needs loss.cert_eps > 0: the certified radius to ask for, in l2 pixels")
        lc = self.cfg.loss
        if lc.adv_eps < 0 or lc.adv_steps < 1 or lc.adv_weight < 0:
            raise InputError(f"loss.adv_eps and loss.adv_weight must be >= 0 and loss.adv_steps >= 1, got "
                             f"{lc.adv_eps}, {lc.adv_weight}, {lc.adv_steps}")
        if lc.adv_demand is not None and lc.adv_demand < 0:
            raise InputError(f"loss.adv_demand must be >= 0 (or null for cert_eps), got {lc.adv_demand}")
        if lc.adv_target not in ("judges", "own"):
            raise InputError(f"loss.adv_target must be 'judges' or 'own', got {lc.adv_target!r}")
        if lc.adv_eps > 0 and not lc.radius_hinge:
            raise InputError("loss.adv_eps needs loss.radius_hinge: the attacked term is the radius hinge at the "
                             "attacked reference")
        self._data = build_triplets(self.cfg.data, self.cfg.seed)

    def dataset(self):
        return self._data

    def build(self, device: torch.device) -> nn.Module:
        m = self.cfg.model
        if m.name:
            from ..hub import load

            metric = load(m.name, weights=m.weights) if m.weights else load(m.name)
            if m.arch:
                metric = with_config(metric, m.arch)
        elif m.arch:
            from ..metrics.lipsim import LipSim

            metric = LipSim(**m.arch)
        else:
            raise InputError("finetune needs model.name (a saved .safetensors from distillation or a hub name) or model.arch")
        if not getattr(metric, "has_embedding", False):
            raise InputError(f"{type(metric).__name__} has no embedding; the hinge recipe fine-tunes embedding metrics")
        if self.cfg.loss.cert_eps > 0 and not getattr(metric, "certified", False):
            raise InputError(f"loss.cert_eps needs a Lipschitz (certified) metric; {type(metric).__name__} is not one")
        for p in metric.parameters():
            p.requires_grad_(True)
        return metric

    @staticmethod
    def _radius(g_ref: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor, x1_near: torch.Tensor, K: float):
        """Signed exact 2AFC radius G·M/(K·C) of each reference feature g_ref against the unit e0, e1."""
        G = g_ref.norm(dim=1)
        er = F.normalize(g_ref, dim=1, eps=NORM_EPS)
        d0 = (er - e0).pow(2).sum(1) / 2
        d1 = (er - e1).pow(2).sum(1) / 2
        margin = torch.where(x1_near, d0 - d1, d1 - d0)
        chord = torch.where(x1_near[:, None], e1 - e0, e0 - e1).norm(dim=1)
        return G * margin / (K * chord.clamp_min(1e-6))

    def attack_reference(self, module: nn.Module, ref: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor,
                         x1_near: torch.Tensor, K: float) -> torch.Tensor:
        """ref + δ, ||δ|| <= adv_eps, in [0, 1]: l2 PGD (normalised steps of 2.5·adv_eps/adv_steps, the attacks'
        exact ball-and-box projection) lowering each triplet's radius, with e0, e1 held fixed. Gradients reach
        δ only."""
        from ..attacks.engine import ascent_direction, project

        lc = self.cfg.loss
        eps, step = float(lc.adv_eps), 2.5 * float(lc.adv_eps) / lc.adv_steps
        center = ref.detach().unsqueeze(1)  # B×1×C×H×W: one perturbed image per reference
        e0, e1 = e0.detach(), e1.detach()
        z = center
        for _ in range(lc.adv_steps):
            z = z.detach().requires_grad_(True)
            r = self._radius(module.raw_features_checked(z[:, 0]).float(), e0, e1, x1_near, K)
            (grad,) = torch.autograd.grad(r.sum(), z)
            with torch.no_grad():
                z = project(z - step * ascent_direction(grad, "l2"), center, eps, "l2")
        return z[:, 0].detach()

    def loss(self, module: nn.Module, batch):
        ref, x0, x1, judge = batch
        n = ref.shape[0]
        cert_eps = self.cfg.loss.cert_eps
        x = torch.cat([ref, x0, x1])
        if cert_eps > 0:
            g = module.raw_features_checked(x).float()
            G = g[:n].norm(dim=1)
            e = F.normalize(g, dim=1, eps=NORM_EPS)
            K = float(module.lipschitz) * float(module.resize.norm(tuple(ref.shape[-2:])))
        else:
            e = module.embed_checked(x).float()
        er, e0, e1 = e[:n], e[n:2 * n], e[2 * n:]
        d0 = (er - e0).pow(2).sum(1) / 2  # = 1 - cos, without cancellation
        d1 = (er - e1).pow(2).sum(1) / 2
        x1_near = judge > 0.5
        d_near = torch.where(x1_near, d1, d0)
        d_far = torch.where(x1_near, d0, d1)
        need = torch.full_like(d_near, self.cfg.loss.margin)
        if cert_eps > 0:
            chord = torch.where(x1_near[:, None], e1 - e0, e0 - e1).norm(dim=1)
            need = need + cert_eps * K * chord / G.clamp_min(1e-6)
        adv = None
        if self.cfg.loss.radius_hinge:
            hinge = torch.relu(cert_eps - self._radius(g[:n], e0, e1, x1_near, K))
            if self.cfg.loss.adv_eps > 0:
                side = x1_near if self.cfg.loss.adv_target == "judges" else (d1 < d0).detach()
                moved = self.attack_reference(module, ref, e0, e1, side, K)
                r_adv = self._radius(module.raw_features_checked(moved).float(), e0, e1, side, K)
                demand = cert_eps if self.cfg.loss.adv_demand is None else float(self.cfg.loss.adv_demand)
                adv = torch.relu(demand - r_adv)
                hinge = hinge + self.cfg.loss.adv_weight * adv
        else:
            hinge = torch.relu(need - (d_far - d_near))
        if self.cfg.loss.agreement_weight:
            w = (2 * judge.float() - 1).abs()
            loss = (w * hinge).sum() / w.sum().clamp_min(1e-12)
        else:
            loss = hinge.mean()
        with torch.no_grad():
            acc = ((d_near < d_far).float()).mean()
            logs = {"2afc_acc": float(acc)}
            if cert_eps > 0:  # share of triplets whose certified radius already reaches cert_eps
                logs["cert_acc"] = float((need - self.cfg.loss.margin <= d_far - d_near).float().mean())
                logs["median_G"] = float(G.median())
            if adv is not None:  # share of attacked references whose radius still reaches the demand
                logs["adv_acc"] = float((adv == 0).float().mean())
        return loss, logs

    def export(self, module: nn.Module, out_dir: Path) -> Path:
        from ..hub import save

        module.name = module.name or "lipsim-finetuned"
        return save(module, out_dir / "model.safetensors", recipe="finetune")

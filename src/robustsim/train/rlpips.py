"""R-LPIPS: LPIPS lin heads (optionally the trunk) trained on 2AFC judgments, naturally or adversarially.

The model is LPIPS (``metrics/lpips.py``) plus the Dist2Logit ranking head; the loss is the head's
binary cross-entropy against the judgments j (fraction preferring x1), and the lin weights are
clamped to >= 0 after every step, as in LPIPS' own training. With ``attack.enabled``, every step
first runs proper PGD (``robustsim.attacks.pgd``: random start, fixed step size, projection onto the
ε-ball and onto [0, 1]) on the chosen input(s) -- ``ref``, ``x0``, ``x1`` or ``x0+x1`` -- maximising
the same ranking loss (or the 2AFC cross-entropy on (-d0, -d1) with ``attack.loss: 2afc``), then
updates on the perturbed triplets (DESIGN §3.2; budgets in [0, 1] units: the paper's l-inf 8/255 in
[-1, 1] units is 4/255 here).

Exports ``model.safetensors`` (``robustsim.load(path)``), ``rlpips.pth`` (the LPIPS state dict, which
``robustsim.load("rlpips-linf-x0", weights=path)`` accepts) and ``rank_head.pth`` (Dist2Logit).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..errors import InputError
from .common import Recipe, StepContext, _mix
from .config import RecipeConfig

SLOTS = {"ref": (0,), "x0": (1,), "x1": (2,), "x0+x1": (1, 2)}


class RankedLPIPS(nn.Module):
    """LPIPS metric + Dist2Logit head: the module R-LPIPS training optimises."""

    def __init__(self, metric: nn.Module, head: nn.Module, tune_trunk: bool):
        super().__init__()
        self.metric = metric
        self.head = head
        self.tune_trunk = tune_trunk

    def distances(self, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = ref.shape[0]
        d = self.metric.distance(torch.cat([ref, ref]), torch.cat([x0, x1]))
        return d[:n], d[n:]

    def config(self) -> Dict[str, Any]:
        return {"metric": self.metric.config(), "tune_trunk": self.tune_trunk,
                "head": [tuple(p.shape) for p in self.head.parameters()]}


class RankingObjective:
    """PGD objective: the per-sample Dist2Logit BCE of triplets whose ``target`` slots are the variable."""

    def __init__(self, model: RankedLPIPS, ref, x0, x1, judge, target: str):
        self.model = model
        self.images = torch.stack([ref, x0, x1], 1).detach()
        self.judge = judge.detach()
        self.slots = SLOTS[target]

    def center(self) -> torch.Tensor:
        return self.images[:, list(self.slots)]

    def __call__(self, z: torch.Tensor, idx: torch.Tensor):
        imgs = [self.images[idx, k] for k in range(3)]
        for j, k in enumerate(self.slots):
            imgs[k] = z[:, j]
        d0, d1 = self.model.distances(*imgs)
        return ranking_bce(self.model.head(d0, d1), self.judge[idx]), None


def load_head(head: nn.Module, path: str) -> None:
    """Start the Dist2Logit head from a saved ``rank_head.pth`` (weights only), with a clear error on a mismatch.

    Why: under attack from the first step a random head learns p = 0.5 for every triplet (the adversarial
    BCE's easy minimum), after which the lin heads get little gradient; starting from a head that already
    maps (d0, d1) to preferences delays that collapse (it does not prevent it: docs/RLPIPS.md).
    """
    from .. import hub
    from ..errors import WeightsError

    try:
        hub.strict_load(head, hub.load_state_dict(Path(path).expanduser()), "the saved head")
    except WeightsError as e:
        raise InputError(f"{path}: does not fit the ranking head (model.arch.head_channels?): {e}") from None


def ranking_bce(p: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """Per-triplet BCE of the head's P(x1 preferred) against j, in float32 (safe under autocast)."""
    p = p.float().reshape(-1).clamp(1e-7, 1 - 1e-7)
    j = judge.float().reshape(-1)
    return -(j * p.log() + (1 - j) * (1 - p).log())


def two_afc_score(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """BAPPS 2AFC score per triplet: (d0<d1)(1-j) + (d1<d0) j + 0.5 (d0=d1)."""
    return (d0 < d1).float() * (1 - judge) + (d1 < d0).float() * judge + 0.5 * (d0 == d1).float()


class RLPIPSRecipe(Recipe):
    """LPIPS/R-LPIPS training on 2AFC data; see the module docstring."""

    name = "rlpips"

    def __init__(self, cfg: RecipeConfig):
        super().__init__(cfg)
        self._data = None

    def setup(self, dist) -> None:
        from .data import build_triplets

        self._data = build_triplets(self.cfg.data, self.cfg.seed)

    def dataset(self):
        return self._data

    def build(self, device: torch.device) -> nn.Module:
        from ..hub import load
        from ..metrics.lpips import LPIPS, Dist2Logit

        m = self.cfg.model
        opts = dict(m.arch)
        dropout = opts.pop("dropout", None)
        chn_mid = int(opts.pop("head_channels", 32))
        kwargs = {k: v for k, v in (("weights", m.weights), ("trunk_weights", m.trunk_weights)) if v}
        metric = load(m.name or "lpips-alex", **kwargs, **opts)
        if not isinstance(metric, LPIPS) or not metric.lpips:
            raise InputError(f"R-LPIPS trains an LPIPS model with lin heads; {m.name!r} is {type(metric).__name__}")
        if m.init_lin == "random":
            for lin in metric.lins:
                nn.init.uniform_(lin.weight, 0.0, 1.0 / lin.weight.shape[1])
        elif m.init_lin != "pretrained":
            raise InputError(f"model.init_lin must be pretrained or random, got {m.init_lin!r}")
        if dropout is not None:
            for lin in metric.lins:
                lin.model[0].p = float(dropout)
        metric.net.requires_grad_(bool(m.tune_trunk))
        for lin in metric.lins:
            lin.weight.requires_grad_(True)
        metric.clamp_lin_()
        head = Dist2Logit(chn_mid=chn_mid)
        if m.head_weights:
            load_head(head, m.head_weights)
        return RankedLPIPS(metric, head, bool(m.tune_trunk))

    def prepare(self, module: nn.Module, batch, ctx: StepContext):
        a = self.cfg.attack
        if not a.enabled:
            return batch
        from ..attacks.pgd import pgd_maximize

        ref, x0, x1, judge = batch
        was = module.training
        module.eval()  # deterministic objective (no dropout) while crafting the perturbation
        try:
            if a.loss == "ranking":
                obj = RankingObjective(module, ref, x0, x1, judge, a.target)
                early = False
            else:
                from ..attacks.twoafc import TwoAFCThreat

                obj = TwoAFCThreat(module.metric, ref, x0, x1, label=(judge > 0.5).long(), target=a.target)
                early = True
            res = pgd_maximize(obj, obj.center(), a.eps, a.norm, steps=a.steps, restarts=1,
                               seed=_mix(self.cfg.seed, ctx.step, ctx.dist.rank, 0xADF), step_size=a.step_size,
                               early_stop=early)
        finally:
            module.train(was)
        imgs = [ref, x0, x1]
        for j, k in enumerate(SLOTS[a.target]):
            imgs[k] = res.x_adv[:, j].detach()
        return (*imgs, judge)

    def loss(self, module: nn.Module, batch):
        ref, x0, x1, judge = batch
        d0, d1 = module.distances(ref, x0, x1)
        loss = ranking_bce(module.head(d0, d1), judge).mean()
        with torch.no_grad():
            score = two_afc_score(d0.detach(), d1.detach(), judge).mean()
        return loss, {"2afc": float(score)}

    def after_step(self, module: nn.Module) -> None:
        module.metric.clamp_lin_()

    def export(self, module: nn.Module, out_dir: Path) -> Path:
        from ..hub import save

        metric = module.metric
        a = self.cfg.attack
        # never keep the hub name it started from ("lpips-alex"): a judged suite would take the trained model
        # for that judge and leave the judge's vote out of its labels
        metric.name = "rlpips-trained-" + ("natural" if not a.enabled else f"{a.norm}-{a.target.replace('+', '-')}")
        torch.save({k: v.detach().cpu() for k, v in metric.state_dict().items()}, out_dir / "rlpips.pth")
        torch.save({k: v.detach().cpu() for k, v in module.head.state_dict().items()}, out_dir / "rank_head.pth")
        return save(metric, out_dir / "model.safetensors", recipe="rlpips")

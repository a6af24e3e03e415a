"""LipSim step 2: fine-tune an embedding metric on 2AFC triplets with the hinge loss (DESIGN §3.4).

With unit embeddings and d = 1 - cos, for each triplet the human-preferred ("near") image should be
closer to the reference than the other ("far") one by a margin m:

    loss = max(0, m - (d(ref, far) - d(ref, near)))

m = 0.5 for LipSim, 0.05 for DreamSim (``loss.margin``). The judgment j (fraction preferring x1) picks
near = x1 when j > 0.5, else x0. Any embedding metric can be fine-tuned (a LipSim saved by the
distillation recipe, a hub model, or a fresh ``model.arch``); the result is saved as a robustsim
``.safetensors`` file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .common import Recipe
from .config import RecipeConfig


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
        self._data = build_triplets(self.cfg.data, self.cfg.seed)

    def dataset(self):
        return self._data

    def build(self, device: torch.device) -> nn.Module:
        m = self.cfg.model
        if m.name:
            from ..hub import load

            metric = load(m.name, weights=m.weights) if m.weights else load(m.name)
        elif m.arch:
            from ..metrics.lipsim import LipSim

            metric = LipSim(**m.arch)
        else:
            raise InputError("finetune needs model.name (a saved .safetensors from distillation or a hub name) or model.arch")
        if not getattr(metric, "has_embedding", False):
            raise InputError(f"{type(metric).__name__} has no embedding; the hinge recipe fine-tunes embedding metrics")
        for p in metric.parameters():
            p.requires_grad_(True)
        return metric

    def loss(self, module: nn.Module, batch):
        ref, x0, x1, judge = batch
        n = ref.shape[0]
        e = module.embed_checked(torch.cat([ref, x0, x1])).float()
        er, e0, e1 = e[:n], e[n:2 * n], e[2 * n:]
        d0 = (er - e0).pow(2).sum(1) / 2  # = 1 - cos, without cancellation
        d1 = (er - e1).pow(2).sum(1) / 2
        x1_near = judge > 0.5
        d_near = torch.where(x1_near, d1, d0)
        d_far = torch.where(x1_near, d0, d1)
        loss = torch.relu(self.cfg.loss.margin - (d_far - d_near)).mean()
        with torch.no_grad():
            acc = ((d_near < d_far).float()).mean()
        return loss, {"2afc_acc": float(acc)}

    def export(self, module: nn.Module, out_dir: Path) -> Path:
        from ..hub import save

        module.name = module.name or "lipsim-finetuned"
        return save(module, out_dir / "model.safetensors", recipe="finetune")

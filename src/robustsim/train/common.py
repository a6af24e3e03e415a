"""The recipe base: what a training recipe provides to the trainer (:class:`Recipe`), what it may know
about the current step (:class:`StepContext`) and the seed mixer every per-step random stream uses.

The loop itself is :mod:`.trainer`; process groups :mod:`.distributed`; checkpoints :mod:`.checkpoint`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .config import RecipeConfig
from .distributed import Dist


def mix(*xs: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    h = 1469598103934665603
    for x in xs:
        h = ((h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


_mix = mix  # the old name: train/rlpips.py (edited elsewhere) still imports it; drop with that import line


@dataclass
class StepContext:
    """What a recipe may know about the current step."""

    step: int
    seed: int
    dist: Dist

    def generator(self, per_rank: bool = True, device: Optional[torch.device] = None) -> torch.Generator:
        """A generator seeded from (seed, step[, rank]): reproducible randomness for this step."""
        g = torch.Generator(device=device or self.dist.device)
        g.manual_seed(mix(self.seed, self.step, self.dist.rank if per_rank else 0, 0xA77))
        return g


class Recipe:
    """What a training recipe provides to :class:`Trainer`.

    ``build`` returns the module whose trainable parameters are optimised (it may hold more than the
    exported metric, e.g. a ranking head); ``loss`` returns the mean loss of a local batch and a dict
    of extra scalars to log; ``export`` writes the trained metric.
    """

    name = "base"

    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg

    def setup(self, dist: Dist) -> None:
        """Work done once before training (e.g. caching teacher embeddings); all ranks call it."""

    def build(self, device: torch.device) -> nn.Module:
        raise NotImplementedError

    def dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def prepare(self, module: nn.Module, batch: Tuple[torch.Tensor, ...], ctx: StepContext) -> Tuple[torch.Tensor, ...]:
        """Transform a batch before the loss (the adversarial step lives here)."""
        return batch

    def loss(self, module: nn.Module, batch: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise NotImplementedError

    def after_step(self, module: nn.Module) -> None:
        """Called after each optimiser step (e.g. projections such as lin weights >= 0)."""

    def arch(self, module: nn.Module) -> Dict[str, Any]:
        """A JSON-able description of the architecture; a checkpoint of another one is refused."""
        cfg = getattr(module, "config", None)
        desc: Dict[str, Any] = {"class": f"{type(module).__module__}:{type(module).__qualname__}"}
        try:
            desc["config"] = json.loads(json.dumps(cfg(), default=str)) if callable(cfg) else None
        except NotImplementedError:
            desc["config"] = None
        return desc

    def export(self, module: nn.Module, out_dir: Path) -> Path:
        raise NotImplementedError


#: names that lived here before the split into trainer / distributed / checkpoint: module -> names.
#: Code in this repository imports them from their modules; this keeps outside scripts working.
_MOVED = {
    "trainer": ("train", "Trainer", "TrainResult", "TrainingDiverged", "StepBatches", "lr_lambda", "make_recipe",
                "spawn_local", "seed_everything", "ScalarLog", "RECIPE_CLASSES", "LOG"),
    "distributed": ("setup_distributed", "free_port"),
    "checkpoint": ("CheckpointMismatch", "read_checkpoint", "atomic_save", "check_fingerprint", "CHECKPOINT",
                   "CKPT_VERSION"),
}


def __getattr__(name: str) -> Any:
    import importlib

    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

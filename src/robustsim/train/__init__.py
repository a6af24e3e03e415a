"""Training recipes: R-LPIPS adversarial training, LipSim distillation and hinge fine-tuning.

    >>> from robustsim.train import load_config, train
    >>> result = train(load_config("configs/distill_tiny.yaml"))
    >>> result.model_path            # a robustsim .safetensors file: robustsim.load(result.model_path)

Every recipe (a :class:`~robustsim.train.common.Recipe`) shares the loop in :mod:`robustsim.train.trainer`
(seeding, exact resume, checkpoints on interrupt (:mod:`.checkpoint`), CSV logs, DDP under torchrun
(:mod:`.distributed`)). Submodules are imported on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_config", "from_dict", "train", "spawn_local", "TrainResult", "TrainingDiverged", "RecipeConfig"]


def __getattr__(name: str) -> Any:
    if name in ("load_config", "from_dict", "RecipeConfig"):
        from . import config

        return getattr(config, name)
    if name in ("train", "spawn_local", "TrainResult", "TrainingDiverged", "Trainer"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""``pixel-l2``: the root-mean-square pixel difference, the baseline every perceptual metric must beat.

Why it is in the hub: a benchmark that claims to measure perceptual judgement has to show that plain
pixel distance fails it (the judged 2AFC suite's discrimination requirement), and attacks/evaluation
only take metrics. d(x, y) = sqrt(mean((x - y)^2)) over channels and pixels, in [0, 1] units. It is
the l2 distance divided by sqrt(3·H·W), so it ranks exactly as l2 and as MSE do and its value does not
depend on the image size. It accepts any size (``input_size`` None) and has no weights.

Certification: d is (1/sqrt(3HW))-Lipschitz in each argument, but it is not a unit-sphere embedding,
so :mod:`robustsim.certify` does not apply (``certified`` stays False, like every non-LipSim metric).
"""
from __future__ import annotations

import torch

from .. import hub
from .base import Metric


class PixelL2(Metric):
    """Root-mean-square difference of two image batches (N×3×H×W in [0, 1]) -> (N,)."""

    input_size = None
    min_size = 1

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # sqrt has an infinite derivative at 0: a tiny floor keeps attack gradients finite on identical inputs
        return (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-20).sqrt()

    def config(self) -> dict:
        return {}


def build_pixel_l2(spec=None, weights=None, trunk_weights=None, **kwargs) -> PixelL2:
    """Hub builder: no weights to load, so ``weights=`` / ``trunk_weights=`` are errors, not ignored."""
    from ..errors import InputError

    if weights is not None or trunk_weights is not None:
        raise InputError("pixel-l2 has no weights (weights=/trunk_weights= do not apply)")
    if kwargs:
        raise InputError(f"pixel-l2 takes no options, got {', '.join(sorted(kwargs))}")
    return PixelL2().eval()


MODELS = [
    hub.ModelSpec(
        name="pixel-l2",
        builder="robustsim.metrics.pixel:build_pixel_l2",
        description="root-mean-square pixel difference (baseline: no perceptual calibration, no weights)",
    )
]

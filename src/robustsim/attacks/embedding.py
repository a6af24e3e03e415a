"""The embedding attack of LipSim (Ghazanfari et al. 2024, Eq. 14).

Maximise ||f(x + δ) - f(x)||² over ||δ||₂ <= ε with PGD, f the metric's (unit-norm) embedding, and
report how far the metric then puts the image from itself, d(x, x + δ). A robust metric keeps that
distance near 0 (the paper: DreamSim's mean d moves 0 -> 0.6 at ε = 1, LipSim's stays near 0).
For metrics without an embedding (LPIPS) the objective is d(x, x + δ) itself.
The gradient of the objective vanishes at δ = 0, so the random start is essential.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..images import check_images
from ..metrics.base import Metric
from .engine import check_eps, check_metric, check_norm, check_steps
from .optimisers import check_method, maximize
from .twoafc import metric_distance


class EmbeddingObjective:
    """||f(z) - f(x)||² for metrics with an embedding, d(x, z) otherwise; no success criterion."""

    def __init__(self, metric: Metric, x: torch.Tensor):
        self.metric = metric
        self.x = x
        self.use_embed = isinstance(metric, Metric) and metric.has_embedding
        if self.use_embed:
            with torch.no_grad():
                self.fx = metric.embed_checked(x)

    def __call__(self, z: torch.Tensor, idx: torch.Tensor):
        if self.use_embed:
            return (self.metric.embed_checked(z[:, 0]) - self.fx[idx]).pow(2).sum(1), None
        return metric_distance(self.metric, self.x[idx], z[:, 0]), None


def embedding_attack(
    metric: Metric,
    x: torch.Tensor,
    eps: float = 1.0,
    norm: str = "l2",
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    method: str = "pgd",
    progress: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Push each image's embedding away from its own; returns (x_adv, d(x, x_adv)).

    l2 PGD by default (the paper's attack); ``method='apgd'`` and ``norm='linf'`` are available too.
    """
    check_metric(metric)
    norm = check_norm(norm)
    method = check_method(method)
    steps, restarts = check_steps(steps, restarts)
    x = check_images(x, "x").detach()
    eps = check_eps(eps, norm, x[0].numel())
    obj = EmbeddingObjective(metric, x)
    res = maximize(method, obj, x[:, None], eps, norm, steps, restarts, seed, early_stop=False, progress=progress)
    x_adv = res.x_adv[:, 0].detach()
    with torch.no_grad():
        d = metric(x, x_adv)
    return x_adv, d

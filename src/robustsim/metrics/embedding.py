"""Cosine distance of any encoder: the generic embedding metric.

d(x, y) = 1 - cos(f(x), f(y)) is computed as ||u - v||² / 2 on the unit vectors u, v. The two are
equal in exact arithmetic, but ``1 - cos`` cancels catastrophically for near-duplicates (cos ≈ 1)
in float32 and can even go negative; the difference form stays >= 0 and accurate.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..preprocess import Resize
from .base import Metric

NORM_EPS = 1e-12


def cosine_distance_from_unit(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """1 - <u, v> for unit vectors, computed from their difference (never negative)."""
    return (u - v).pow(2).sum(dim=1) / 2


class EmbeddingMetric(Metric):
    """d = 1 - cos of ``encoder(normalise(resize(x)))``.

    Args:
        encoder: module mapping B×3×H×W (after resize/normalisation) to B×D (or B×D×1×1).
        input_size: native (H, W); inputs of another size are resized (``resize_mode``) first.
        mean, std: per-channel normalisation applied after resizing (None: inputs used as is).
        center: subtract the per-sample mean of the features before L2 normalisation (DreamSim).
    """

    def __init__(
        self,
        encoder: nn.Module,
        input_size: Optional[Tuple[int, int]] = (224, 224),
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        resize_mode: str = "bicubic",
        antialias: bool = False,
        center: bool = False,
        min_size: int = 1,
    ):
        super().__init__()
        self.encoder = encoder
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.resize = Resize(self.input_size, resize_mode, antialias)
        self.center = center
        self.min_size = min_size
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        else:
            self.mean = self.std = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) encoder output B×D of validated images."""
        x = self.resize(x)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.encoder(x).flatten(1)

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised vector g(x) (N, D) whose direction is the embedding: features, flattened and
        (``center``) centred. Its norm ||g(x)|| is what certificates need (a radius scales with it), which
        the unit embedding has lost. Validates and casts ``x`` like every public entry point."""
        return self.raw_features_checked(self.check_input(x, "x"))

    def raw_features_checked(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`raw_features` of an already validated batch: the one feature-extraction path shared by
        :meth:`embed_checked`, ``robustsim.certify``, retrieval and the fine-tuning loss, so the
        certified vector is the embedded one."""
        f = self.features(x).flatten(1)
        if self.center:
            f = f - f.mean(dim=1, keepdim=True)
        return f

    def embed_checked(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw_features_checked(x), dim=1, eps=NORM_EPS)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if x.shape == y.shape:
            e = self.embed_checked(torch.cat([x, y]))
            return cosine_distance_from_unit(e[:n], e[n:])
        return cosine_distance_from_unit(self.embed_checked(x), self.embed_checked(y))

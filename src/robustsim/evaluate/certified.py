"""Certified-accuracy arithmetic: fraction of triplets that are correct *and* certified at a budget.

Kept separate from the certificate maths (:mod:`robustsim.certify`): this module only counts.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from ..errors import InputError


def certified_accuracy(scores: torch.Tensor, radius: torch.Tensor, eps: float) -> float:
    """mean(score · 1[radius > eps]): with 0/1 scores, the fraction correct and certified at eps."""
    s, r = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(radius, dtype=torch.float64)
    if s.shape != r.shape or s.numel() == 0:
        raise InputError(f"scores and radii must be non-empty and of equal shape, got {tuple(s.shape)} and {tuple(r.shape)}")
    if float(eps) < 0:
        raise InputError(f"eps must be >= 0, got {eps}")
    return float((s * (r > float(eps)).double()).mean())


def certified_curve(scores: torch.Tensor, radius: torch.Tensor, eps: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    """Certified accuracy at every budget in ``eps`` (vectorised :func:`certified_accuracy`)."""
    s, r = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(radius, dtype=torch.float64)
    e = torch.as_tensor(eps, dtype=torch.float64)
    if s.shape != r.shape or s.numel() == 0:
        raise InputError("scores and radii must be non-empty and of equal shape")
    return (s[None, :] * (r[None, :] > e[:, None]).double()).mean(1)

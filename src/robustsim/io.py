"""Image files <-> tensors, and the validation every public entry point applies to tensors.

Tensors are never silently fixed: a tensor outside [0, 1], with NaN/Inf, of the wrong rank or
channel count is a :class:`~robustsim.errors.InputError`. Files, on the other hand, are converted
to RGB on the way in (grayscale, palette, RGBA composited on white, 16-bit scaled exactly).
"""
from __future__ import annotations

import torch

from .errors import InputError

RANGE_TOL = 1e-6


def check_images(x: torch.Tensor, name: str = "x", min_size: int = 1) -> torch.Tensor:
    """Validate an image batch N×3×H×W in [0, 1]; return it as a floating tensor.

    A single 3×H×W image is *not* accepted: the API is batched, and guessing would hide bugs.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{name}: expected a batch N×3×H×W (rank 4), got rank {x.dim()} with shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise InputError(
            f"{name}: expected 3 (RGB) channels, got {x.shape[1]}; convert grayscale/RGBA images first "
            "(robustsim.io.load_image does this for files)"
        )
    n, _, h, w = x.shape
    if n == 0:
        raise InputError(f"{name}: empty batch")
    if min(h, w) < min_size:
        raise InputError(f"{name}: image of {h}×{w} is smaller than the metric's minimum size {min_size}×{min_size}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating tensor in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise InputError(f"{name}: contains NaN or Inf")
        lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise InputError(f"{name}: values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}] (images in [-1, 1] or 0-255?)")
    return x

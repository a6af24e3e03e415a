"""Resizing and cropping as linear operators with their exact l2 operator norm.

Certificates are proved at a metric's native resolution; a user perturbs their own H×W image.
If the metric applies a linear map R first, ||R δ|| <= ||R|| ||δ||, so a radius r at native size
is a radius r / ||R|| in the user's pixels. For separable resizes R = A_h ⊗ A_w (per channel),
whose norm is the product of the two 1-D matrices' largest singular values.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import InputError

MODES = ("bilinear", "bicubic", "nearest", "area")


def _interp_kwargs(mode: str, antialias: bool) -> dict:
    if mode not in MODES:
        raise InputError(f"unknown resize mode {mode!r}; choose one of {', '.join(MODES)}")
    kw: dict = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kw["align_corners"] = False
        kw["antialias"] = antialias
    return kw


@lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int, mode: str = "bicubic", antialias: bool = False) -> torch.Tensor:
    """The (n_out × n_in) float64 matrix of a 1-D resize, read off by resizing the basis vectors.

    The basis vectors are laid out as 1×n_in rows (resized along W). The n_in×1 column layout is
    not used: that tensor is also "channels-last", and torch's antialiased kernels give wrong
    results on it (torch 2.13; tests/test_preprocess.py compares against real 2-D resizes).
    The same torch defect makes antialiased resizes *to width 1* depend on the memory format;
    no metric resizes to width 1, and this matrix is the well-defined (channels-last) operator.
    """
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
    rows = F.interpolate(eye, size=(1, n_out), **_interp_kwargs(mode, antialias))
    return rows.reshape(n_in, n_out).T.contiguous()


def resize_norm(in_size: Tuple[int, int], out_size: Tuple[int, int], mode: str = "bicubic", antialias: bool = False) -> float:
    """Exact l2 operator norm of resizing an H×W image to out_size (identity -> 1.0)."""
    if tuple(in_size) == tuple(out_size):
        return 1.0
    a_h = resize_matrix(int(in_size[0]), int(out_size[0]), mode, antialias)
    a_w = resize_matrix(int(in_size[1]), int(out_size[1]), mode, antialias)
    from .lipschitz.linalg import spectral_norm

    return spectral_norm(a_h) * spectral_norm(a_w)


class Resize(torch.nn.Module):
    """Resize to a fixed size (no-op when already there); exposes :meth:`norm` for certificates.

    The output is *not* clamped: bicubic overshoot is a linear effect and clamping would only
    change the images the network sees, not the bound.
    """

    def __init__(self, size: Optional[Tuple[int, int]], mode: str = "bicubic", antialias: bool = False):
        super().__init__()
        _interp_kwargs(mode, antialias)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.mode = mode
        self.antialias = antialias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None or tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, **_interp_kwargs(self.mode, self.antialias))

    def norm(self, in_size: Tuple[int, int]) -> float:
        """||R|| for inputs of size in_size."""
        if self.size is None:
            return 1.0
        return resize_norm(tuple(in_size), self.size, self.mode, self.antialias)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}, antialias={self.antialias}"

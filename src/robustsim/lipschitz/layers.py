"""Parameter-free 1-Lipschitz (l2) building blocks: channel padding, sum pooling, invertible
downsampling, truncation. Each has operator norm exactly 1 (padding, downsampling and flattening are
isometries; pooling and truncation are contractions with norm 1).

Each also states its floating-point error (``float_error_terms(in_shape, dtype) -> (a, b)``: the
computed output at a computed input x is within ``a·||x|| + b`` of the exact output), which
``robustsim.certify.rounding`` sums over a network. Only the sum pool rounds; the others move or
drop numbers and are exact.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PadChannels", "SumPool2d", "InvertibleDownsample", "Truncate", "Flatten"]


class _Exact:
    """Mixin: a layer that only moves, pads or drops numbers has no rounding error."""

    def float_error_terms(self, in_shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[float, float]:
        return 0.0, 0.0


class PadChannels(_Exact, nn.Module):
    """Zero-pad the channel dimension from ``in_channels`` to ``out_channels`` (an isometry)."""

    def __init__(self, out_channels: int, in_channels: int = 3):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"PadChannels cannot shrink {in_channels} channels to {out_channels}")
        self.out_channels, self.in_channels = int(out_channels), int(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"PadChannels expected {self.in_channels} channels, got {x.shape[1]}")
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


class SumPool2d(nn.Module):
    """``sum / k`` over non-overlapping k×k windows: ``AvgPool2d(k, divisor_override=k)``.

    Each output is (1/k)·(sum of k² inputs), whose l2 norm is at most the norm of those inputs, and
    windows are disjoint, so the operator norm is exactly 1 (a plain average would have 1/k and
    waste the Lipschitz budget). The official LipSim network uses two of these with k = 4.
    """

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.avg_pool2d(x, k, stride=k, divisor_override=k)

    def float_error_terms(self, in_shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[float, float]:
        """Each output is a sum of k² inputs (any order) then a division by k (or a product with a rounded
        1/k): error <= γ(k²+2)·(Σ|x|)/k per output, and ||(Σ_window |x|)/k|| <= ||x|| (disjoint windows,
        Cauchy-Schwarz), so a = γ(k²+2); b covers underflow."""
        from .sll import gamma

        fi = torch.finfo(dtype)
        k2 = self.kernel_size**2
        return gamma(k2 + 2, fi.eps / 2) * (1 + 1e-9), fi.tiny * (k2 + 2) * math.sqrt(math.prod(in_shape))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, divisor={self.kernel_size}"


class InvertibleDownsample(_Exact, nn.Module):
    """Space-to-depth (PixelUnshuffle): C×H×W -> C·s²×(H/s)×(W/s), a permutation, hence an isometry.

    Lets the SLL convolutions run at a lower resolution without losing information or Lipschitz budget.
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.factor
        if x.shape[-1] % s or x.shape[-2] % s:
            raise ValueError(f"InvertibleDownsample({s}) needs H and W divisible by {s}, got {tuple(x.shape[-2:])}")
        if x.dim() != 4:
            return F.pixel_unshuffle(x, s)
        # Same values and channel order as F.pixel_unshuffle (c·s² + i·s + j), written in one pass straight
        # into channels-last memory, the layout the SLL convolutions that follow run fastest in.
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5).reshape(n, h // s, w // s, c * s * s)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Truncate(_Exact, nn.Module):
    """Keep the first ``dim`` coordinates of a flat vector (a projection, norm 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.dim:
            raise ValueError(f"Truncate({self.dim}) got only {x.shape[1]} features")
        return x[:, : self.dim]

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Flatten(_Exact, nn.Flatten):
    """nn.Flatten (an isometry), re-exported so every LipSim piece comes from this module."""

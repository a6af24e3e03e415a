"""Parameter-free 1-Lipschitz (l2) building blocks: channel padding, sum pooling, binomial blur,
invertible downsampling, truncation. Each has operator norm at most 1 (padding, downsampling and
flattening are isometries; pooling, blur and truncation are contractions).

Each also states its floating-point error (``float_error_terms(in_shape, dtype) -> (a, b)``: the
computed output at a computed input x is within ``a·||x|| + b`` of the exact output), which
``robustsim.certify.rounding`` sums over a network. Only the sum pool and the blur round; the others
move or drop numbers and are exact.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PadChannels", "SumPool2d", "BinomialBlur2d", "InvertibleDownsample", "Truncate", "Flatten"]


class _Exact:
    """Mixin: a layer that only moves, pads or drops numbers has no rounding error."""

    def float_error_terms(self, in_shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[float, float]:
        return 0.0, 0.0


def _sum_error_terms(n: int, in_shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[float, float]:
    """(a, b) for a layer whose outputs are sums of at most n products (any order) with nonnegative weights of
    l1 norm <= 1: a = γ_n (rounded up a hair), b covers underflow over the tensor."""
    from .sll import gamma

    fi = torch.finfo(dtype)
    return gamma(n, fi.eps / 2) * (1 + 1e-9), fi.tiny * n * math.sqrt(math.prod(in_shape))


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
        return _sum_error_terms(self.kernel_size**2 + 2, in_shape, dtype)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, divisor={self.kernel_size}"


class BinomialBlur2d(nn.Module):
    """Per-channel binomial low-pass, zero padded, same size: the anti-aliasing filter put before a pool.

    Why: a k×k sum pool after convolutions is not shift-tolerant (a one-cell shift of the feature map
    moves half of every 2×2 window's mass); blurring first spreads each cell over neighbouring windows,
    as in Zhang (ICML 2019), so small translations move the pooled features less. The kernel is
    b·bᵀ with b the binomial row of length ``size`` normalised to sum 1 ([1, 2, 1]/4 for size 3). It is
    nonnegative with entries summing to 1, so by Young's inequality ||k * x|| <= ||k||₁·||x|| = ||x||:
    1-Lipschitz, no learned parameter, nothing to rescale.
    """

    def __init__(self, size: int = 3):
        super().__init__()
        size = int(size)
        if size < 1 or size % 2 != 1:
            raise ValueError(f"BinomialBlur2d size must be odd and >= 1, got {size}")
        self.size = size
        row = [math.comb(size - 1, i) / 2 ** (size - 1) for i in range(size)]
        #: (size, size) weights, dyadic rationals (exact in float32 and float64 for size <= 25)
        self.taps = [[a * b for b in row] for a in row]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"BinomialBlur2d expects N×C×H×W input, got shape {tuple(x.shape)}")
        s, r = self.size, self.size // 2
        if s == 1:
            return x
        h, w = x.shape[-2:]
        xp = F.pad(x, (r, r, r, r))
        # An explicit sum of shifted copies (not a convolution kernel that might use Winograd), so the
        # float error is that of a plain sum of s² products, which float_error_terms bounds.
        out = None
        for i in range(s):
            for j in range(s):
                term = xp[..., i:i + h, j:j + w] * self.taps[i][j]
                out = term if out is None else out + term
        return out

    def float_error_terms(self, in_shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[float, float]:
        """Each output is a sum of s² products k_ij·x (Higham: error <= γ(s²)·Σ k_ij|x|, products rounded
        or not, any order), and x -> Σ k_ij|x| is this blur applied to |x|, whose norm is <= ||x||: so
        a = γ(s²), taken as γ(s² + 1) for slack; b covers underflow."""
        if self.size == 1:
            return 0.0, 0.0
        return _sum_error_terms(self.size**2 + 1, in_shape, dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}"


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

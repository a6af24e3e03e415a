"""1-Lipschitz (l2) building blocks: SLL layers, padding/pooling/blur/downsampling pieces, verification.

``verify`` (empirical Lipschitz probes) and ``convert`` (official LipSim checkpoints) are imported on
demand: ``from robustsim.lipschitz import verify``.
"""
from __future__ import annotations

from .layers import BinomialBlur2d, Flatten, InvertibleDownsample, PadChannels, SumPool2d, Truncate
from .sll import SLLConv2d, SLLLinear, adjoint_conv2d, clear_caches, conv_t, linear_t, safe_inv

__all__ = [
    "SLLConv2d", "SLLLinear", "PadChannels", "SumPool2d", "BinomialBlur2d", "InvertibleDownsample", "Truncate",
    "Flatten", "adjoint_conv2d", "clear_caches", "conv_t", "linear_t", "safe_inv",
]

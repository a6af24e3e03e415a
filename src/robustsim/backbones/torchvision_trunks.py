"""AlexNet, VGG16 and SqueezeNet1.1 feature trunks for LPIPS, ST-LPIPS and DISTS, without torchvision.

Each trunk keeps torchvision's ``features`` layout (``features.N.weight``, Fire modules as
``features.N.squeeze.weight`` ...), so a torchvision ImageNet checkpoint loads into it key for key,
and returns the activations after the ReLUs that LPIPS taps (DESIGN §3.1). Layers after the last tap
(the final max-pool, the classifier) are left out: they have no effect on LPIPS.

Two families of variants share the code:
- ``alex-st`` / ``vgg-st``: the shift-tolerant trunks of ST-LPIPS (Ghildyal & Liu, ECCV 2022).
  Every downsampling step becomes "stride-1 version of the op, then a blur-pool": a fixed 3×3
  binomial filter ([1,2,1]⊗[1,2,1]/16) applied per channel with stride 2 after reflect-padding by 2
  on every side. AlexNet's first convolution runs at stride 1 and is blurred-and-subsampled before its
  ReLU. Their indices are the ST-LPIPS release's (its state dict keys ``net.sliceS.N.*`` map to
  ``features.N.*``); the blur filters are constants, not weights.
- ``vgg-l2``: DISTS's VGG16 (Ding et al. 2020), whose four max-pools are replaced by L2 pooling:
  sqrt(conv(x², h) + 1e-12) with h the normalised outer product of Hann(5)[1:-1] = [0.5, 1, 0.5],
  stride 2, zero padding 1. Its convolutions are torchvision's VGG16, at torchvision's indices.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ..hub import show_keys


class Fire(nn.Module):
    """SqueezeNet's Fire block: 1×1 squeeze, then 1×1 and 3×3 expands concatenated (torchvision names)."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(s)), self.expand3x3_activation(self.expand3x3(s))], 1)


class BlurPool(nn.Module):
    """ST-LPIPS's anti-aliased subsampling: reflect-pad by 2, then a fixed per-channel 3×3 binomial blur at stride 2.

    The filter is a non-persistent buffer: it is a constant of the architecture, so loaders check
    a release's copy of it instead of loading it.
    """

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        k = a[:, None] * a[None, :]
        self.register_buffer("filt", (k / k.sum()).expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=self.channels)


class L2Pool(nn.Module):
    """DISTS's L2 pooling: sqrt(depthwise conv(x², Hann 3×3, stride 2, zero padding 1) + 1e-12).

    Unlike max pooling it is smooth and does not alias, which is what makes DISTS tolerant to small
    shifts and textures. The 1e-12 keeps the square root differentiable where a window is all zero.
    """

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)  # np.hanning(5)[1:-1]
        k = a[:, None] * a[None, :]
        self.register_buffer("filter", (k / k.sum()).float().expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.filter, stride=2, padding=1, groups=self.channels)
        return (out + 1e-12).sqrt()


def _alexnet_features() -> List[nn.Module]:
    r = lambda: nn.ReLU(inplace=True)  # noqa: E731
    return [
        nn.Conv2d(3, 64, 11, stride=4, padding=2), r(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), r(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), r(),
        nn.Conv2d(384, 256, 3, padding=1), r(),
        nn.Conv2d(256, 256, 3, padding=1), r(),
    ]


def _vgg16_features() -> List[nn.Module]:
    layers: List[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            cin = int(v)
    return layers


def _alexnet_st_features() -> List[nn.Module]:
    r = lambda: nn.ReLU(inplace=True)  # noqa: E731
    return [
        nn.Conv2d(3, 64, 11, stride=1, padding=2), BlurPool(64), r(),  # tap 2
        nn.MaxPool2d(3, 1), BlurPool(64), nn.Conv2d(64, 192, 5, padding=2), r(),  # tap 6
        nn.MaxPool2d(3, 1), BlurPool(192), nn.Conv2d(192, 384, 3, padding=1), r(),  # tap 10
        nn.Conv2d(384, 256, 3, padding=1), r(),  # tap 12
        nn.Conv2d(256, 256, 3, padding=1), r(),  # tap 14
    ]


def _vgg16_pooled_features(pool: str) -> List[nn.Module]:
    """VGG16 with each max-pool replaced: "st" -> MaxPool2d(2, 1) + BlurPool (two modules), "l2" -> L2Pool (one)."""
    layers: List[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers += [nn.MaxPool2d(2, 1), BlurPool(cin)] if pool == "st" else [L2Pool(cin)]
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            cin = int(v)
    return layers


def _squeezenet11_features() -> List[nn.Module]:
    return [
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True), Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
        nn.MaxPool2d(3, 2, ceil_mode=True), Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
        nn.MaxPool2d(3, 2, ceil_mode=True), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
    ]


# name -> (layer factory, indices of the tapped modules in `features`, channels per tap, smallest side)
# The smallest side is the least H (and W) for which every layer up to the last tap has a non-empty
# output (checked in the tests by running the trunk at that size and one pixel less).
_SPECS: Dict[str, Tuple] = {
    "alex": (_alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), 31),
    "vgg": (_vgg16_features, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), 16),
    "squeeze": (_squeezenet11_features, (1, 4, 7, 9, 10, 11, 12), (64, 128, 256, 384, 384, 512, 512), 17),
    # shift-tolerant: every reflect pad needs an input larger than the pad (2), hence the larger minima
    "alex-st": (_alexnet_st_features, (2, 6, 10, 12, 14), (64, 192, 384, 256, 256), 21),
    "vgg-st": (lambda: _vgg16_pooled_features("st"), (3, 9, 17, 25, 33), (64, 128, 256, 512, 512), 18),
    "vgg-l2": (lambda: _vgg16_pooled_features("l2"), (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), 1),
}

TORCHVISION_NAMES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1", "alex-st": "alexnet (shift-tolerant)",
                     "vgg-st": "vgg16 (shift-tolerant)", "vgg-l2": "vgg16"}


class Trunk(nn.Module):
    """A torchvision ``features`` stack that returns the activations at LPIPS's taps.

    Attributes:
        features: nn.Sequential with torchvision's indices (checkpoint keys ``features.N.*``).
        taps: indices in ``features`` whose outputs are returned.
        channels: channel count of each tap.
        min_size: the smallest image side the trunk accepts.
    """

    def __init__(self, name: str):
        super().__init__()
        if name not in _SPECS:
            raise ValueError(f"unknown LPIPS trunk {name!r}; choose one of {', '.join(_SPECS)}")
        make, taps, channels, min_size = _SPECS[name]
        self.name = name
        self.features = nn.Sequential(*make())
        self.taps: Tuple[int, ...] = taps
        self.channels: Tuple[int, ...] = channels
        self.min_size: int = min_size

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> List[torch.Tensor]:
        """Activations at the taps; ``channels_last`` runs the stack in NHWC (faster with oneDNN on CPU)."""
        outs = []
        taps = self.taps
        k = 0
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == taps[k]:
                outs.append(x)
                k += 1
                if k == len(taps):
                    break
        return outs

    def load_torchvision(self, state: Dict[str, torch.Tensor], what: str) -> None:
        """Load a torchvision checkpoint: a whole classifier (``classifier.*`` ignored) or ``features.*`` only."""
        own = self.state_dict()
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        other = sorted(k for k in state if not k.startswith(("features.", "classifier.")))
        extra_feats = sorted(k for k in feats if k not in own)
        missing = sorted(k for k in own if k not in feats)
        shapes = sorted(f"{k} {tuple(feats[k].shape)} != {tuple(own[k].shape)}" for k in own if k in feats and feats[k].shape != own[k].shape)
        if other or missing or shapes or extra_feats:
            parts = []
            if missing:
                parts.append(f"missing keys: {show_keys(missing)}")
            if other or extra_feats:
                parts.append(f"unexpected keys: {show_keys(other + extra_feats)}")
            if shapes:
                parts.append(f"wrong shapes: {show_keys(shapes)}")
            raise WeightsError(
                f"{what} is not a torchvision {TORCHVISION_NAMES[self.name]} checkpoint "
                f"(expected features.* keys, optionally classifier.*): " + "; ".join(parts)
            )
        self.load_state_dict(feats, strict=True)

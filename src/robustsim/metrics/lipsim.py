"""LipSim (Ghazanfari et al., ICLR 2024): a 1-Lipschitz embedding compared with cosine distance.

The network g is built only from 1-Lipschitz (l2) pieces (``robustsim.lipschitz``): a stem
(optionally a binomial low-pass of the image and invertible downsampling, then zero channel padding), SLL
convolutions, sum pooling (optionally after a binomial blur), flattening, SLL dense layers and truncation.
The embedding is g(x)/||g(x)|| and d = 1 - cos; because ||g(x) - g(y)|| <= ||x - y||, distances and 2AFC
decisions can be certified (``robustsim.certify``).

Two kinds of configuration (:class:`LipSimConfig`):

* the **official** architectures of the paper (``OFFICIAL["small"]`` ... ``["xlarge"]``): 224×224 input,
  D SLL convolutions at full resolution with C channels, two 4×4 sum pools, L SLL dense layers; the
  released checkpoints load through ``lipsim-small`` ... ``lipsim-xlarge`` with ``weights=PATH``
  (an official ``.pth`` or a converted ``.safetensors``);
* **CPU-friendly** ones, e.g. :data:`CPU_DEFAULT`: a PixelUnshuffle stem (``stem="unshuffle4"``:
  3×128×128 -> 48×32×32, an isometry), a few SLL convolutions at that reduced resolution, one sum
  pool to a small grid, and a few dense layers (about 3.7 M parameters, 15 MB in float32). The shipped
  ``lipsim-default`` (v9) is this with a 3×3 binomial blur on the input and another before a 2×2 pool, two
  dense layers of inner width 128 and no truncation (3.26 M parameters, 12 288 output coordinates); its file
  carries its configuration.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import hub
from ..errors import InputError, WeightsError
from ..lipschitz.layers import BinomialBlur2d, Flatten, InvertibleDownsample, PadChannels, SumPool2d, Truncate
from ..lipschitz.sll import SLLConv2d, SLLLinear
from .embedding import EmbeddingMetric

_STEM = re.compile(r"^(pad|unshuffle(\d+))$")


@dataclass(frozen=True)
class LipSimConfig:
    """Architecture of a LipSim network (every field is a plain int/str so it round-trips through JSON).

    Attributes:
        input_size: native square resolution (images of any other size are resized, bicubic).
        stem: ``"pad"`` (zero-pad 3 -> channels, the official stem) or ``"unshuffleS"`` (PixelUnshuffle
            by S: 3×H×W -> 3S²×H/S×W/S, then zero-pad to ``channels``).
        channels: C, the width of the convolutional part.
        conv_depth, conv_inner, kernel_size: number of SLL convolutions, their inner dimension and kernel.
        input_blur: side of a fixed binomial low-pass applied to the input image, before the stem; 1 = none
            (official, and every shipped model before v8). Why: the perturbations an ℓ2 attacker finds on v7
            put over a third of their energy above 1/4 cycle per pixel, natural distortions 2%
            (docs/TRAINING.md, fourteenth round); a low-pass damps the one more than the other and costs no
            Lipschitz budget.
        pool: sum-pool factors applied in turn after the convolutions (official: 4, 4).
        blur: side of a fixed binomial low-pass (``BinomialBlur2d``) put before each pool for shift
            tolerance; 1 = none (official, and every model before v7).
        linear_depth, linear_inner: number of SLL dense layers and their inner dimension.
        embed_dim: E, the number of leading coordinates kept (the teacher's dimension).
    """

    input_size: int = 224
    stem: str = "pad"
    channels: int = 45
    conv_depth: int = 20
    conv_inner: int = 5
    kernel_size: int = 3
    input_blur: int = 1
    pool: Tuple[int, ...] = (4, 4)
    blur: int = 1
    linear_depth: int = 7
    linear_inner: int = 1024
    embed_dim: int = 1792

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", tuple(int(p) for p in self.pool))
        m = _STEM.match(str(self.stem))
        if not m:
            raise InputError(f"LipSim stem must be 'pad' or 'unshuffleN' (e.g. 'unshuffle4'), got {self.stem!r}")
        for name in ("input_size", "channels", "conv_inner", "kernel_size", "linear_inner", "embed_dim"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"LipSim {name} must be >= 1, got {getattr(self, name)}")
        if self.conv_depth < 0 or self.linear_depth < 0:
            raise InputError("LipSim conv_depth and linear_depth must be >= 0")
        if self.kernel_size % 2 != 1:
            raise InputError(f"LipSim kernel_size must be odd, got {self.kernel_size}")
        for field in ("blur", "input_blur"):
            side = getattr(self, field)
            if int(side) < 1 or int(side) % 2 != 1:
                raise InputError(f"LipSim {field} must be an odd size >= 1 (1 = no blur), got {side}")
        if self.blur > 1 and not self.pool:
            raise InputError(f"LipSim blur={self.blur} filters before each pool, but this network has no pool")
        s = self.stem_factor
        if self.channels < 3 * s * s:
            raise InputError(f"LipSim stem {self.stem} gives {3 * s * s} channels, more than channels={self.channels}")
        side = self.input_size
        for f in (s, *self.pool):
            if f < 1 or side % f:
                raise InputError(
                    f"LipSim input_size {self.input_size} is not divisible by the stem/pool factors {s}, {self.pool}"
                )
            side //= f
        if self.embed_dim > self.features:
            raise InputError(f"LipSim embed_dim {self.embed_dim} exceeds the {self.features} features of the network")

    @property
    def stem_factor(self) -> int:
        m = _STEM.match(self.stem)
        return int(m.group(2)) if m and m.group(2) else 1

    @property
    def grid(self) -> int:
        """Side of the feature map after the stem and the pools."""
        return self.input_size // (self.stem_factor * math.prod(self.pool))

    @property
    def features(self) -> int:
        """Length of the flattened vector the dense layers work on."""
        return self.channels * self.grid**2

    def num_parameters(self) -> int:
        conv = self.conv_depth * (self.conv_inner * self.channels * self.kernel_size**2 + 2 * self.conv_inner)
        lin = self.linear_depth * (self.linear_inner * self.features + 2 * self.linear_inner)
        return conv + lin

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["pool"] = list(self.pool)
        return d


#: Official architectures (DESIGN §3.4; conv inner dim 5 = the official ``--conv_size`` default).
OFFICIAL: Dict[str, LipSimConfig] = {
    "small": LipSimConfig(channels=45, conv_depth=20, linear_depth=7, linear_inner=1024),
    "medium": LipSimConfig(channels=60, conv_depth=30, linear_depth=10, linear_inner=2048),
    "large": LipSimConfig(channels=90, conv_depth=50, linear_depth=10, linear_inner=2048),
    "xlarge": LipSimConfig(channels=120, conv_depth=70, linear_depth=15, linear_inner=2048),
}

#: A CPU-friendly configuration: 128×128 input, PixelUnshuffle(4) stem to 48×32×32, 8 SLL convolutions
#: (inner 32) at 32×32, one 4×4 sum pool to 48×8×8 = 3072 features, 3 SLL dense layers (inner 384),
#: 1280 output coordinates (EfficientNet-Lite0's embedding size). 3.65 M parameters = 14.6 MB float32.
CPU_DEFAULT = LipSimConfig(
    input_size=128, stem="unshuffle4", channels=48, conv_depth=8, conv_inner=32, kernel_size=3,
    pool=(4,), linear_depth=3, linear_inner=384, embed_dim=1280,
)


class LipSimNetwork(nn.Module):
    """g: 3×S×S in [0, 1] -> R^E, 1-Lipschitz in l2 (every layer has operator norm / Lipschitz constant <= 1)."""

    def __init__(self, config: LipSimConfig):
        super().__init__()
        self.config = config
        s = config.stem_factor
        stem = [BinomialBlur2d(config.input_blur)] if config.input_blur > 1 else []
        stem += [InvertibleDownsample(s)] if s > 1 else []
        stem.append(PadChannels(config.channels, 3 * s * s))
        self.stem = nn.Sequential(*stem)
        self.convs = nn.Sequential(
            *[SLLConv2d(config.channels, config.conv_inner, config.kernel_size) for _ in range(config.conv_depth)]
        )
        self.pool = nn.Sequential(*[
            layer for p in config.pool
            for layer in ([BinomialBlur2d(config.blur)] if config.blur > 1 else []) + [SumPool2d(p)]
        ])
        self.flatten = Flatten()
        self.linears = nn.Sequential(*[SLLLinear(config.features, config.linear_inner) for _ in range(config.linear_depth)])
        self.truncate = Truncate(config.embed_dim)

    def forward(self, x: torch.Tensor, trace: Optional[list] = None, exact64: bool = False) -> torch.Tensor:
        """g(x). ``trace`` (a list) / ``exact64``: see :meth:`traced_forward` (certificates use them; going
        through forward keeps module hooks seeing every pass)."""
        if trace is not None or exact64:
            return self._traced(x, trace if trace is not None else [], exact64)
        # Channels-last activations: oneDNN / cuDNN run these narrow convolutions ~1.5x faster in NHWC
        # (benchmarks/bench_shipped.py); the layout changes no value beyond float rounding.
        x = self.stem(x).contiguous(memory_format=torch.channels_last)
        x = self.pool(self.convs(x))
        return self.truncate(self.linears(self.flatten(x)))

    def traced_forward(self, x: torch.Tensor, exact64: bool = False
                       ) -> Tuple[torch.Tensor, List[Tuple[nn.Module, torch.Tensor, Tuple[int, ...]]]]:
        """:meth:`forward` layer by layer, recording for every layer its module, the l2 norm of its computed
        input per sample (float64, rounded up) and the per-sample input shape.

        ``exact64=False``: the same operations, order and memory layout as :meth:`forward`, so the output
        is bitwise what forward computes. ``exact64=True``: every layer in float64, SLL layers with their
        float64 rescaling (``exact_forward64``). ``robustsim.certify.rounding`` turns the norms into a
        proven bound on the float error of the output (each layer's ``float_error_terms``).
        """
        trace: List[Tuple[nn.Module, torch.Tensor, Tuple[int, ...]]] = []
        out = self(x, trace=trace, exact64=exact64)
        return out, trace

    def _traced(self, x: torch.Tensor, trace: list, exact64: bool) -> torch.Tensor:
        n_stem = len(self.stem)
        if exact64:
            x = x.to(torch.float64)
        for i, (_, m) in enumerate(self.layers()):
            # a sum of n squares has relative error <= γ_n, the square root halves it and adds u;
            # (1 + γ_{n+2}) rounds the norm up
            nu = (x[0].numel() + 2) * torch.finfo(x.dtype).eps / 2
            norm = torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim()))).to(torch.float64) * (1 + nu / (1 - nu))
            trace.append((m, norm, tuple(x.shape[1:])))
            if exact64 and hasattr(m, "exact_forward64"):
                x = m.exact_forward64(x)
            else:
                x = m(x)
            if i == n_stem - 1 and not exact64:
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def exact_forward64(self, x: torch.Tensor) -> torch.Tensor:
        """The network in float64 with float64 SLL rescalings (see :meth:`traced_forward`)."""
        return self.traced_forward(x, exact64=True)[0]

    def layers(self):
        """(name, module) of every layer in order, for layer-by-layer verification."""
        for name, m in self.stem.named_children():
            yield f"stem.{name}", m
        for name, m in self.convs.named_children():
            yield f"convs.{name}", m
        for name, m in self.pool.named_children():
            yield f"pool.{name}", m
        yield "flatten", self.flatten
        for name, m in self.linears.named_children():
            yield f"linears.{name}", m
        yield "truncate", self.truncate


class LipSim(EmbeddingMetric):
    """LipSim metric: embedding g(x)/||g(x)||, d = 1 - cos, certified (g is 1-Lipschitz at native size).

    Keyword arguments are the fields of :class:`LipSimConfig` plus ``resize_mode`` (how inputs of another
    size are brought to ``input_size``; bicubic as in the paper, no mean/std normalisation).
    """

    certified = True
    lipschitz = 1.0

    def __init__(self, resize_mode: str = "bicubic", **config: Any):
        cfg = config.pop("config", None)
        cfg = cfg if isinstance(cfg, LipSimConfig) else LipSimConfig(**config)
        super().__init__(
            LipSimNetwork(cfg), input_size=(cfg.input_size, cfg.input_size), mean=None, std=None,
            resize_mode=resize_mode,
        )
        self.cfg = cfg
        self.resize_mode = resize_mode

    @classmethod
    def from_config(cls, config: LipSimConfig, resize_mode: str = "bicubic") -> "LipSim":
        return cls(resize_mode=resize_mode, config=config)

    def config(self) -> Dict[str, Any]:
        return {**self.cfg.to_dict(), "resize_mode": self.resize_mode}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", config={self.cfg}"


# --------------------------------------------------------------------------- hub

_GDRIVE = "released on Google Drive by the LipSim authors (not downloadable by script)"


def _spec(size: str) -> hub.ModelSpec:
    cfg = OFFICIAL[size]
    return hub.ModelSpec(
        name=f"lipsim-{size}",
        builder="robustsim.metrics.lipsim:build_official",
        description=f"LipSim-{size} (official architecture D={cfg.conv_depth} C={cfg.channels} "
        f"L={cfg.linear_depth} F={cfg.linear_inner}); weights=PATH required",
        kwargs={"size": size},
        weights={"main": hub.WeightFile(f"lipsim-{size}.safetensors", description=_GDRIVE)},
        certified=True,
    )


#: The shipped default (docs/MODELS.md, "lipsim-default v9"): the effnet-distilled model below fine-tuned
#: with the radius hinge on judge-labelled training triplets (v5: configs/shipped_v7_radius050_12k.yaml to
#: shipped_v12_radius075_36k.yaml, the last two averaged), then its stem and convolutions moved into a network
#: that pools 2×2 (scripts/transplant_weights.py) and trained on at radius 0.75 and 0.5
#: (configs/shipped_v15_pool2.yaml, shipped_v16_pool2_radius050.yaml), then given a 3×3 binomial blur before the
#: pool and trained on at radius 0.5 (configs/shipped_v23_blur3_radius050.yaml: v7), then given a 3×3 binomial
#: blur on the input and trained on with the hinge at clean and attacked references, then at radius 0.25
#: (configs/shipped_v37_inblur3_adv050.yaml, shipped_v38_inblur3_adv050_r025.yaml: v8), then on twice the labelled
#: triplets with both (shipped_v41_inblur3_adv050_r025_24k.yaml: v9); inside the package so it works offline.
#: Its sha256 is pinned; retraining changes it (update both).
DEFAULT_ASSET = "lipsim_default.safetensors"
DEFAULT_SHA256 = "f5485934a130685cc70970d3e0ff5249daa72024de0a0b34d4f04b7ad20f9775"
#: The default until v2: a CPU LipSim distilled from EfficientNet-Lite0 (docs/MODELS.md, second card).
EFFNET_ASSET = "lipsim_effnet.safetensors"
EFFNET_SHA256 = "3dcf7222e911a2995a63ee328226c8be44932a5fef330b2d1679fe5ab942a1c9"


def _packaged_spec(name: str, description: str, asset: str, sha256: str) -> hub.ModelSpec:
    """A hub entry for a LipSim file inside the package (offline, sha256-pinned)."""
    return hub.ModelSpec(
        name=name,
        builder="robustsim.metrics.lipsim:build_default",
        description=description,
        weights={"main": hub.WeightFile(asset, sha256=sha256, package=("robustsim", f"assets/{asset}"),
                                        description="ships inside the robustsim package")},
        certified=True,
    )


MODELS = [_spec(s) for s in OFFICIAL] + [
    _packaged_spec("lipsim-default", "shipped certified LipSim (128px; lipsim-effnet fine-tuned toward human-calibrated "
                   "judges with the radius hinge; offline)", DEFAULT_ASSET, DEFAULT_SHA256),
    # The previous default under its own name (issue 17): results and scripts that mean *that* model stay
    # reproducible now that the default is another recipe.
    _packaged_spec("lipsim-effnet", "certified LipSim distilled from EfficientNet-Lite0 (128px, the default until "
                   "v2; offline)", EFFNET_ASSET, EFFNET_SHA256),
]


def _load_weights_file(path: Path, embed_dim: Optional[int]) -> LipSim:
    """A LipSim from an official checkpoint or a robustsim safetensors file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            has_header = "robustsim" in (f.metadata() or {})
        if has_header:
            metric = hub.load_saved(path)
            if not isinstance(metric, LipSim):
                raise WeightsError(f"{path} holds a {type(metric).__name__}, not a LipSim model")
            if embed_dim is not None and embed_dim != metric.cfg.embed_dim:
                raise InputError(f"{path} has embed_dim {metric.cfg.embed_dim}, not the requested {embed_dim}")
            return metric
    from ..lipschitz.convert import convert_official_state

    return convert_official_state(hub.load_state_dict(path), embed_dim=embed_dim, what=str(path))


def build_official(spec: hub.ModelSpec, weights=None, trunk_weights=None, size: str = "small",
                   embed_dim: Optional[int] = None, **kwargs: Any) -> LipSim:
    """Builder of ``lipsim-{small,medium,large,xlarge}``: needs the released weights as a file.

    The checkpoint's shapes are checked against the named architecture (depth, width, linear depth);
    the linear inner dimension is taken from the file (versions of the official code differ there).
    """
    if trunk_weights is not None:
        raise InputError(f"{spec.name} has no separate trunk; pass weights=PATH only")
    if kwargs:
        raise InputError(f"{spec.name} does not take options {', '.join(sorted(kwargs))}")
    path = hub.fetch(spec.weights["main"], weights)
    metric = _load_weights_file(path, embed_dim)
    want, got = OFFICIAL[size], metric.cfg
    for name in ("input_size", "stem", "channels", "conv_depth", "conv_inner", "kernel_size", "input_blur", "pool",
                 "blur", "linear_depth"):
        if getattr(want, name) != getattr(got, name):
            raise WeightsError(
                f"{path} is not a LipSim-{size} checkpoint: {name} is {getattr(got, name)}, "
                f"LipSim-{size} has {getattr(want, name)} (load it with robustsim.load(PATH) after converting)"
            )
    return metric


def build_default(spec: hub.ModelSpec, weights=None, trunk_weights=None, **kwargs: Any) -> LipSim:
    """Builder of ``lipsim-default`` / ``lipsim-effnet``: the packaged model (or ``weights=PATH``, a robustsim LipSim file)."""
    if trunk_weights is not None:
        raise InputError(f"{spec.name} has no separate trunk; pass weights=PATH only")
    if kwargs:
        raise InputError(f"{spec.name} does not take options {', '.join(sorted(kwargs))}")
    return _load_weights_file(hub.fetch(spec.weights["main"], weights), None)

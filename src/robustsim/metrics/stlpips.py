"""ShiftTolerant-LPIPS (Ghildyal & Liu, ECCV 2022), written in the project.

Why it is here: LPIPS is very sensitive to imperceptible misalignment (a 1-pixel shift of a photo
scores like a visible distortion), because its trunks subsample without low-pass filtering.
ST-LPIPS keeps LPIPS's formula (DESIGN §3.1: scaling layer, unit-normalised taps, squared
differences, non-negative 1×1 heads, spatial mean, sum over taps) but runs it on anti-aliased
trunks (``alex-st`` / ``vgg-st`` in :mod:`robustsim.backbones.torchvision_trunks`: stride-1 ops
followed by a reflect-padded binomial blur-pool), and both the trunk and the heads were trained
on BAPPS human 2AFC judgments. The released weights are complete models.

Results equal ``stlpips_pytorch.stlpips.LPIPS(net, variant="shift_tolerant")(x, y, normalize=True)``
(0.0.2) with the released weights; the faster evaluation paths of :class:`~robustsim.metrics.lpips.LPIPS`
(one NHWC batch under ``no_grad``, heads as dot products on channel means) apply unchanged.

Models: ``stlpips-alex`` (smallest input 21×21) and ``stlpips-vgg`` (18×18); kwargs ``spatial``.
Weights: the ``stlpips-pytorch==0.0.2`` wheel (found without importing it; its code needs IPython
and torchsummary), else the ShiftTolerant-LPIPS GitHub repository. BSD-2-Clause.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import torch

from .. import hub
from ..errors import InputError
from .lpips import LPIPS, SCALE, SHIFT, load_into

STLPIPS_PKG = "stlpips-pytorch==0.0.2"
_SHA256 = {
    "alex": "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
    "vgg": "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
}
_URL = "https://github.com/abhijay9/ShiftTolerant-LPIPS/raw/main/stlpips/weights/vST0.0/{net}_shift_tolerant.pth"


def stlpips_weight_file(net: str) -> hub.WeightFile:
    """The released ST-LPIPS model (trunk + heads): cache, installed wheel, then GitHub; sha256 pinned."""
    return hub.WeightFile(
        filename=f"stlpips-vST0.0-{net}_shift_tolerant.pth",
        sha256=_SHA256[net],
        urls=(_URL.format(net=net),),
        package=("stlpips_pytorch", f"weights/vST0.0/{net}_shift_tolerant.pth"),
        install=STLPIPS_PKG,
        description=f"ShiftTolerant-LPIPS {net} (BSD-2, Ghildyal & Liu 2022)",
    )


class STLPIPS(LPIPS):
    """ShiftTolerant-LPIPS distance between images in [0, 1]; ``forward(x, y)`` returns (N,) distances.

    Args:
        net: "alex" or "vgg" (the two released models).
        lpips: True for the calibrated heads; False sums the squared differences over channels.
        spatial: as for LPIPS: forward returns the mean of :meth:`spatial_map` instead of the mean of
            the per-tap maps (the reference's ``spatial=True``); :meth:`spatial_map` gives N×1×H×W either way.

    Built with random weights; :func:`build_stlpips` loads the released ones.
    """

    nets = ("alex", "vgg")
    trunk_suffix = "-st"

    def __init__(self, net: str = "alex", lpips: bool = True, spatial: bool = False):
        super().__init__(net=net, version="0.1", lpips=lpips, spatial=spatial)

    def config(self) -> Dict[str, Any]:
        return {"net": self.net_name, "lpips": self.lpips, "spatial": self.spatial}

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, shift_tolerant=True, lpips={self.lpips}, spatial={self.spatial}"


_SLICE = re.compile(r"^net\.slice\d+\.(\d+)\.(.+)$")


def from_stlpips_state(metric: STLPIPS, state: Dict[str, torch.Tensor], what: str) -> Dict[str, torch.Tensor]:
    """Map a released ST-LPIPS state dict onto our keys, strictly.

    ``net.slice{s}.{i}.weight|bias`` -> ``net.features.{i}.*``; ``lin{k}.model.1.weight`` as is;
    ``scaling_layer.*`` and the blur-pool filters (``net.slice{s}.{i}.filt``) are constants of the
    architecture: they are checked against ours, not loaded. The reference loads with
    ``strict=False``, which would silently keep random weights for any key it misses; here every
    missing, unexpected or misshapen key is an error.
    """
    own = metric.state_dict()
    consts = dict(metric.net.named_buffers())
    mapped: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    problems: List[str] = []
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            unexpected.append(k)
            continue
        if k.startswith("scaling_layer."):
            const = {"shift": SHIFT, "scale": SCALE}.get(k.split(".", 1)[1])
            if const is None or v.numel() != 3 or not torch.allclose(v.float().flatten(), torch.tensor(const), atol=1e-6):
                problems.append(f"{k} does not hold the standard LPIPS constants")
            continue
        m = _SLICE.match(k)
        ours = f"net.features.{m.group(1)}.{m.group(2)}" if m else k
        if m and m.group(2) == "filt":
            ref = consts.get(f"features.{m.group(1)}.filt")
            if ref is None:
                unexpected.append(k)
            elif v.shape != ref.shape or not torch.allclose(v.float(), ref, atol=1e-7):
                problems.append(f"{k} is not the 3×3 binomial blur filter")
            continue
        if ours not in own:
            unexpected.append(k)
            continue
        mapped[ours] = v
    missing = [k for k in own if k not in mapped and (k.startswith("net.") or (metric.lpips and k.startswith("lin")))]
    shapes = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in mapped.items() if v.shape != own[k].shape]
    hub.check_keys(what, f"ST-LPIPS-{metric.net_name}", missing, sorted(unexpected), shapes, problems)
    return mapped


def build_stlpips(spec: Optional[hub.ModelSpec] = None, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
                  net: str = "alex", lpips: bool = True, spatial: bool = False) -> STLPIPS:
    """Build ``stlpips-{net}`` from the released model (or ``weights=PATH`` in the same format)."""
    if trunk_weights is not None:
        raise InputError("ST-LPIPS models contain their own (shift-tolerant) trunk; trunk_weights= does not apply")
    metric = STLPIPS(net=net, lpips=lpips, spatial=spatial)
    path = hub.fetch(stlpips_weight_file(net), weights)
    state = hub.load_state_dict(path)
    if not lpips:
        state = {k: v for k, v in state.items() if not k.startswith("lin")}
    load_into(metric, from_stlpips_state(metric, state, str(path)))
    return metric.eval()


MODELS = [
    hub.ModelSpec(
        name=f"stlpips-{net}",
        builder="robustsim.metrics.stlpips:build_stlpips",
        description=f"ShiftTolerant-LPIPS, anti-aliased {net} trunk and heads trained on BAPPS human 2AFC (not robust)",
        kwargs={"net": net},
        weights={"main": stlpips_weight_file(net)},
        human_calibrated=True,
        group="stlpips",
    )
    for net in ("alex", "vgg")
]

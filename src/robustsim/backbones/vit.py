"""ViT feature extractors built with timm (DINO, DINOv2, SynCLR) and open_clip (CLIP, OpenCLIP).

DreamSim reads every backbone in one key layout, the DINO ``VisionTransformer`` one
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}``, ``norm``; CLIP adds ``pos_drop`` = ln_pre and ``proj``), and so do its LoRA
adapters. This module turns such a state dict into a timm or open_clip model, so LoRA can be merged
in that one layout before conversion (see :mod:`robustsim.backbones.lora`).

Features, as DreamSim extracts them (``feature_extraction/extractor.py`` of the DreamSim repository):

- ``"cls"`` (DINO, DINOv2, SynCLR): the CLS token at the output of the last block, *before* the
  final LayerNorm (DreamSim hooks ``blocks[11]``), 768-d.
- ``"embedding"`` (CLIP, OpenCLIP): ``ln_post(CLS) @ proj``, the image embedding, 512-d.

Architectures are built with ``pretrained=False``; weights always come from files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import InputError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

EXTRA_HINT = "pip install 'robustsim[dreamsim]'"


def import_timm():
    """timm, after making torchvision importable; a clear error naming the extra if it is missing."""
    from .._compat import ensure_torchvision_importable

    try:
        ensure_torchvision_importable()
        import timm
    except ImportError as e:
        raise InputError(f"ViT backbones need timm: {EXTRA_HINT} ({e})") from e
    return timm


def import_open_clip():
    """open_clip, after making torchvision importable; a clear error naming the extra if it is missing."""
    from .._compat import ensure_torchvision_importable

    try:
        ensure_torchvision_importable()
        import open_clip
    except ImportError as e:
        raise InputError(f"CLIP backbones need open_clip: {EXTRA_HINT} ({e})") from e
    return open_clip


@dataclass(frozen=True)
class ViTArch:
    """One backbone architecture and how DreamSim reads it.

    library: "timm" or "open_clip"; name: timm model name or open_clip config name.
    feature: "cls" (pre-norm CLS token) or "embedding" (projected CLS).
    pos_grid: side of the position-embedding grid in the released weights (DINOv2: 37, trained at 518).
    """

    library: str
    name: str
    patch: int
    feature: str
    dim: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    quick_gelu: bool = False
    pos_grid: Optional[int] = None
    overrides: Dict[str, Any] = field(default_factory=dict)


ARCHS: Dict[str, ViTArch] = {
    "dino_vitb16": ViTArch("timm", "vit_base_patch16_224", 16, "cls", 768, IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_vitb14": ViTArch("timm", "vit_base_patch14_dinov2", 14, "cls", 768, IMAGENET_MEAN, IMAGENET_STD, pos_grid=37),
    "synclr_vitb16": ViTArch("timm", "vit_base_patch16_224", 16, "cls", 768, IMAGENET_MEAN, IMAGENET_STD),
    "clip_vitb16": ViTArch("open_clip", "ViT-B-16", 16, "embedding", 512, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, quick_gelu=True),
    "clip_vitb32": ViTArch("open_clip", "ViT-B-32", 32, "embedding", 512, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, quick_gelu=True),
    "open_clip_vitb16": ViTArch("open_clip", "ViT-B-16", 16, "embedding", 512, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "open_clip_vitb32": ViTArch("open_clip", "ViT-B-32", 32, "embedding", 512, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
}


def arch(backbone: str) -> ViTArch:
    if backbone not in ARCHS:
        raise InputError(f"unknown ViT backbone {backbone!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[backbone]


# --------------------------------------------------------------------------- modules


class TimmCLS(nn.Module):
    """A timm ViT returning the CLS token after the last block, before the final norm (DreamSim's "cls")."""

    def __init__(self, name: str, img_size: int = 224, depth: Optional[int] = None, width: Optional[int] = None,
                 heads: Optional[int] = None):
        super().__init__()
        timm = import_timm()
        kw: Dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": img_size}
        if depth is not None:
            kw["depth"] = depth
        if width is not None:
            kw["embed_dim"] = width
        if heads is not None:
            kw["num_heads"] = heads
        self.vit = timm.create_model(name, **kw)
        self.vit.norm = nn.Identity()  # DreamSim reads the last block's output, before the final LayerNorm
        self.grid = self.vit.patch_embed.grid_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)[:, 0]


class OpenClipEmbedding(nn.Module):
    """An open_clip vision tower returning the projected image embedding (DreamSim's "embedding")."""

    def __init__(self, name: str, quick_gelu: bool, depth: Optional[int] = None, width: Optional[int] = None,
                 heads: Optional[int] = None, out_dim: Optional[int] = None):
        super().__init__()
        open_clip = import_open_clip()
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise InputError(f"open_clip has no model config {name!r}")
        vision = dict(cfg["vision_cfg"])
        embed_dim = int(out_dim if out_dim is not None else cfg["embed_dim"])
        if depth is not None:
            vision["layers"] = depth
        if width is not None:
            vision["width"] = width
        if heads is not None:
            vision["head_width"] = width // heads if width is not None else vision.get("width", 768) // heads
        try:  # the vision tower alone (no text tower); private in open_clip, so fall back to the full model
            from open_clip.model import _build_vision_tower

            self.visual = _build_vision_tower(embed_dim, vision, quick_gelu=quick_gelu)
        except ImportError:
            cfg = {**cfg, "embed_dim": embed_dim, "vision_cfg": vision, "quick_gelu": quick_gelu}
            self.visual = open_clip.model.CLIP(**cfg).visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out


def build_module(backbone: str, overrides: Optional[Mapping[str, int]] = None) -> nn.Module:
    """The randomly initialised feature extractor of a backbone (overrides: depth / width / heads / out_dim)."""
    a = arch(backbone)
    o = dict(overrides or {})
    unknown = set(o) - {"depth", "width", "heads", "out_dim"}
    if unknown:
        raise InputError(f"unknown architecture overrides {sorted(unknown)}; allowed: depth, width, heads, out_dim")
    if a.library == "timm":
        if "out_dim" in o:
            raise InputError(f"{backbone} has no projection; out_dim does not apply")
        return TimmCLS(a.name, 224, o.get("depth"), o.get("width"), o.get("heads"))
    return OpenClipEmbedding(a.name, a.quick_gelu, o.get("depth"), o.get("width"), o.get("heads"), o.get("out_dim"))


def feature_dim(backbone: str, overrides: Optional[Mapping[str, int]] = None) -> int:
    """Size of the feature a backbone returns (768 for "cls" ViT-B, 512 for the CLIP embeddings)."""
    a = arch(backbone)
    o = overrides or {}
    if a.feature == "cls":
        return int(o.get("width", a.dim))
    return int(o.get("out_dim", a.dim))


# --------------------------------------------------------------------------- checkpoints -> DINO layout


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _tensors_only(obj: Any, what: str) -> Dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{what} does not contain a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{what}: expected only tensors, found non-tensor entries {bad[:4]}")
    return dict(obj)


def dino_layout(backbone: str, obj: Any, what: str) -> Dict[str, torch.Tensor]:
    """The DINO-layout state dict of a backbone from its released checkpoint object.

    - dino_vitb16 / dinov2_vitb14: the torch.hub backbone files (``dino_vitbase16_pretrain.pth``,
      ``dinov2_vitb14_pretrain.pth``), plain state dicts; wrapped ones (``teacher``/``model``/
      ``state_dict``, ``module.``/``backbone.`` prefixes) are unwrapped.
    - synclr_vitb16: ``synclr_vit_b_16.pth``, ``{"model": {"module.visual.<key>": ...}}``.
    - clip_* / open_clip_*: DreamSim's ``*_pretrain.pth.tar``, ``{"state_dict": {<DINO layout>, "proj"}}``;
      an open_clip model state dict (``visual.*`` keys) is converted too.
    """
    a = arch(backbone)
    if a.library == "open_clip":
        if isinstance(obj, Mapping) and "state_dict" in obj:
            return _tensors_only(obj["state_dict"], what)
        state = _tensors_only(obj, what)
        if any(k.startswith("visual.") for k in state):
            return open_clip_to_dino(_strip(state, "visual."))
        if "conv1.weight" in state:
            return open_clip_to_dino(state)
        return state
    if isinstance(obj, Mapping) and backbone == "synclr_vitb16" and "model" in obj:
        obj = obj["model"]
    if isinstance(obj, Mapping):
        for key in ("teacher", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    state = _tensors_only(obj, what)
    for prefix in ("module.visual.", "module.backbone.", "backbone.", "module."):
        if any(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def open_clip_to_dino(v: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip vision-tower keys -> DreamSim's DINO layout (the inverse of :func:`dino_to_open_clip`)."""
    out: Dict[str, torch.Tensor] = {}
    try:
        out["cls_token"] = v["class_embedding"].reshape(1, 1, -1)
        out["pos_embed"] = v["positional_embedding"].unsqueeze(0)
        w = v["conv1.weight"]
        out["patch_embed.proj.weight"] = w
        out["patch_embed.proj.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
        out["pos_drop.weight"], out["pos_drop.bias"] = v["ln_pre.weight"], v["ln_pre.bias"]
        out["norm.weight"], out["norm.bias"] = v["ln_post.weight"], v["ln_post.bias"]
        out["proj"] = v["proj"]
    except KeyError as e:
        raise WeightsError(f"open_clip state dict lacks {e}") from e
    for k, t in v.items():
        if not k.startswith("transformer.resblocks."):
            continue
        i, rest = k[len("transformer.resblocks."):].split(".", 1)
        for ours, theirs in _BLOCK_MAP.items():
            if rest == theirs:
                out[f"blocks.{i}.{ours}"] = t
    return out


_BLOCK_MAP = {  # DINO layout (per block) -> open_clip ResidualAttentionBlock
    "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj.weight": "attn.out_proj.weight", "attn.proj.bias": "attn.out_proj.bias",
    "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}


def dino_to_open_clip(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """DreamSim's CLIP-as-DINO layout -> open_clip ``VisionTransformer`` keys.

    open_clip's patch convolution has no bias; a bias in the DINO layout (DreamSim stores one) is
    folded exactly into the patch tokens' position embeddings, since both are added before ln_pre.
    """
    s = dict(state)
    out: Dict[str, torch.Tensor] = {}
    try:
        out["class_embedding"] = s.pop("cls_token").reshape(-1)
        pos = s.pop("pos_embed").reshape(-1, out["class_embedding"].shape[0]).clone()
        bias = s.pop("patch_embed.proj.bias", None)
        if bias is not None:
            pos[1:] += bias
        out["positional_embedding"] = pos
        out["conv1.weight"] = s.pop("patch_embed.proj.weight")
        out["ln_pre.weight"], out["ln_pre.bias"] = s.pop("pos_drop.weight"), s.pop("pos_drop.bias")
        out["ln_post.weight"], out["ln_post.bias"] = s.pop("norm.weight"), s.pop("norm.bias")
        out["proj"] = s.pop("proj")
    except KeyError as e:
        raise WeightsError(f"CLIP checkpoint lacks {e} (expected DreamSim's CLIP-as-DINO layout)") from e
    for k in list(s):
        if k.startswith("blocks."):
            i, rest = k[len("blocks."):].split(".", 1)
            if rest in _BLOCK_MAP:
                out[f"transformer.resblocks.{i}.{_BLOCK_MAP[rest]}"] = s.pop(k)
    out.update(s)  # leftovers surface as "unexpected keys" in the strict load
    return out


def resample_pos_embed(pos: torch.Tensor, grid: Tuple[int, int], offset: float = 0.1) -> torch.Tensor:
    """Resize a (1, 1 + M*M, D) position embedding to a new patch grid as DINOv2 does at run time.

    DINOv2 (``interpolate_pos_encoding``) uses bicubic interpolation with ``scale_factor =
    (new + 0.1) / M`` and no antialiasing; the scale factor, not the output size, sets the sampling
    positions, so this reproduces it exactly for a fixed input size.
    """
    n = pos.shape[1] - 1
    m = int(round(math.sqrt(n)))
    if m * m != n:
        raise WeightsError(f"position embedding with {n} patch tokens is not a square grid")
    if (m, m) == tuple(grid):
        return pos
    cls, patches = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    img = patches.reshape(1, m, m, dim).permute(0, 3, 1, 2).float()
    sh, sw = (grid[0] + offset) / m, (grid[1] + offset) / m
    img = torch.nn.functional.interpolate(img, scale_factor=(sh, sw), mode="bicubic", align_corners=False, antialias=False)
    if tuple(img.shape[-2:]) != tuple(grid):
        raise WeightsError(f"position-embedding resampling gave {tuple(img.shape[-2:])}, expected {tuple(grid)}")
    img = img.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls, img], dim=1)


def load_dino_layout(module: nn.Module, backbone: str, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load a DINO-layout state dict into a module from :func:`build_module` (strict, named errors)."""
    from ..hub import strict_load

    s = dict(state)
    if isinstance(module, TimmCLS):
        s.pop("mask_token", None)  # DINOv2's masked-modelling token, unused at inference
        s.pop("norm.weight", None)
        s.pop("norm.bias", None)  # the final norm is not part of DreamSim's "cls" feature
        pos = s.get("pos_embed")
        own = module.vit.pos_embed
        if pos is not None and pos.ndim == 3 and pos.shape[1] != own.shape[1]:
            s["pos_embed"] = resample_pos_embed(pos, module.grid)
        strict_load(module.vit, s, what)
    elif isinstance(module, OpenClipEmbedding):
        strict_load(module.visual, dino_to_open_clip(s), what)
    else:  # pragma: no cover - build_module makes only the two
        raise TypeError(type(module).__name__)

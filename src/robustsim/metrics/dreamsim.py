"""DreamSim (Fu et al. 2023) and plain ViT cosine metrics: the non-robust baselines and LipSim's teacher.

DreamSim concatenates ViT features and compares them with cosine distance after centring:
``e = f - mean(f)``, ``e / ||e||``, ``d = 1 - cos`` (DreamSim >= 0.2 ``normalize_embedding``; the
0.1 order, normalise-then-centre, gives the same distance). Facts from the DreamSim repository
(``dreamsim/config.py``, ``model.py``, ``feature_extraction/*``):

- types: ``ensemble`` = DINO ViT-B/16 "cls" (768) + CLIP ViT-B/16 "embedding" (512) + OpenCLIP
  ViT-B/16 "embedding" (512) = 1792, concatenated in that order; single-branch ``dino_vitb16``,
  ``clip_vitb32``, ``open_clip_vitb32``, ``dinov2_vitb14``, ``synclr_vitb16``.
- input: RGB in [0, 1] resized to 224×224 (bicubic; DreamSim resizes PIL images, so antialiased),
  then normalised per branch (DINO/DINOv2/SynCLR: ImageNet mean/std; CLIP/OpenCLIP: OpenAI CLIP's).
- LoRA (PEFT) on each backbone's ``qkv`` layers (r=16, lora_alpha=0.5 in the released configs, read
  from each ``adapter_config.json``), merged here without peft (:mod:`robustsim.backbones.lora`).
- release zips (``dreamsim_weights`` in config.py): backbones ``clip_vitb16_pretrain.pth.tar``,
  ``open_clip_vitb16_pretrain.pth.tar`` (B/32 for the single models), ``synclr_vit_b_16.pth``,
  ``dinov2_vitb14_pretrain.pth``, and adapter folders ``ensemble_lora`` (0.2) or
  ``<backbone>_lora`` per branch (0.1), ``<backbone>_single_lora`` for single models. The DINO ViT-B/16
  backbone itself is not in the zip: DreamSim gets ``dino_vitbase16_pretrain.pth`` from torch.hub.

``robustsim.load("dreamsim-ensemble", weights=DIR_OR_ZIP)`` reads an extracted folder or the zip;
``trunk_weights=`` names the DINO / DINOv2 backbone file when it is not inside that folder.
The plain ``*-cosine`` metrics use the same features without LoRA and without centring.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .. import hub
from ..backbones import vit
from ..errors import InputError, WeightsError
from .embedding import EmbeddingMetric

INPUT_SIZE = (224, 224)
RELEASES = "https://github.com/ssundaram21/dreamsim/releases/download"

# dreamsim_type -> its backbones, in DreamSim's concatenation order
TYPES: Dict[str, tuple] = {
    "ensemble": ("dino_vitb16", "clip_vitb16", "open_clip_vitb16"),
    "dino_vitb16": ("dino_vitb16",),
    "clip_vitb32": ("clip_vitb32",),
    "open_clip_vitb32": ("open_clip_vitb32",),
    "dinov2_vitb14": ("dinov2_vitb14",),
    "synclr_vitb16": ("synclr_vitb16",),
}

# backbone -> file names it may have in a release (first = DreamSim's name)
BACKBONE_FILES: Dict[str, tuple] = {
    "dino_vitb16": ("dino_vitbase16_pretrain.pth",),
    "dinov2_vitb14": ("dinov2_vitb14_pretrain.pth",),
    "synclr_vitb16": ("synclr_vit_b_16.pth",),
    "clip_vitb16": ("clip_vitb16_pretrain.pth.tar",),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar",),
    "open_clip_vitb16": ("open_clip_vitb16_pretrain.pth.tar",),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar",),
}

_ZIPS = {
    "ensemble": "v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip",
    "dino_vitb16": "v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip",
    "clip_vitb32": "v0.2.0-checkpoints/dreamsim_clip_vitb32_checkpoint.zip",
    "open_clip_vitb32": "v0.2.0-checkpoints/dreamsim_open_clip_vitb32_checkpoint.zip",
    "dinov2_vitb14": "v0.2.1-checkpoints/dreamsim_dinov2_vitb14_checkpoint.zip",
    "synclr_vitb16": "v0.2.1-checkpoints/dreamsim_synclr_vitb16_checkpoint.zip",
}

# No published checksums: these are verified on first download (trust on first use, see _fetch).
_ZIP_FILES = {
    t: hub.WeightFile(filename=rel.split("/")[-1], urls=(f"{RELEASES}/{rel}",),
                      description=f"DreamSim {t} release (backbones + LoRA adapter)")
    for t, rel in _ZIPS.items()
}
_DINO_FILE = hub.WeightFile(
    filename="dino_vitbase16_pretrain.pth",
    urls=("https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",),
    description="DINO ViT-B/16 backbone (torch.hub), used by DreamSim's DINO branch",
)
_DINOV2_FILE = hub.WeightFile(
    filename="dinov2_vitb14_pretrain.pth",
    urls=("https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",),
    description="DINOv2 ViT-B/14 backbone (torch.hub)",
)
_TRUNK_FILES = {"dino_vitb16": _DINO_FILE, "dinov2_vitb14": _DINOV2_FILE}


def _hub_name(s: str) -> str:
    return s.replace("_", "-")


def _dreamsim_spec(t: str) -> hub.ModelSpec:
    weights = {"main": _ZIP_FILES[t]}
    for b in TYPES[t]:
        if b in _TRUNK_FILES:
            weights["trunk"] = _TRUNK_FILES[b]
    dims = "+".join(str(vit.ARCHS[b].dim) for b in TYPES[t])
    return hub.ModelSpec(
        name=f"dreamsim-{_hub_name(t)}",
        builder="robustsim.metrics.dreamsim:build",
        description=f"DreamSim {t} ({dims}-d, LoRA-tuned on NIGHTS; 224px; not robust)",
        kwargs={"dreamsim_type": t},
        weights=weights,
        extra="dreamsim",
    )


# plain cosine metrics: backbone -> (release zip holding its weights, or the torch.hub file)
_PLAIN = {
    "dino_vitb16": _DINO_FILE,
    "dinov2_vitb14": _DINOV2_FILE,
    "synclr_vitb16": _ZIP_FILES["synclr_vitb16"],
    "clip_vitb16": _ZIP_FILES["ensemble"],
    "clip_vitb32": _ZIP_FILES["clip_vitb32"],
    "open_clip_vitb16": _ZIP_FILES["ensemble"],
    "open_clip_vitb32": _ZIP_FILES["open_clip_vitb32"],
}


def _plain_spec(b: str) -> hub.ModelSpec:
    a = vit.ARCHS[b]
    return hub.ModelSpec(
        name=f"{_hub_name(b)}-cosine",
        builder="robustsim.metrics.dreamsim:build",
        description=f"cosine distance of {b} {'pre-norm CLS token' if a.feature == 'cls' else 'image embedding'} "
                    f"({a.dim}-d, 224px; DreamSim's un-tuned baseline; not robust)",
        kwargs={"backbones": [b], "lora": False, "center": False},
        weights={"main": _PLAIN[b]},
        extra="dreamsim",
    )


MODELS = [_dreamsim_spec(t) for t in TYPES] + [_plain_spec(b) for b in vit.ARCHS]


# --------------------------------------------------------------------------- modules


class Branch(nn.Module):
    """One backbone with its own input normalisation: [0, 1] images at 224 -> features."""

    def __init__(self, backbone: str, overrides: Optional[Mapping[str, int]] = None):
        super().__init__()
        a = vit.arch(backbone)
        self.backbone = backbone
        self.dim = vit.feature_dim(backbone, overrides)
        self.net = vit.build_module(backbone, overrides)
        self.register_buffer("mean", torch.tensor(a.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(a.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"{self.backbone}, dim={self.dim}"


class Concat(nn.Module):
    """Branch features concatenated in order (DreamSim's ensemble embedding before normalisation)."""

    def __init__(self, branches: Iterable[Branch]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class DreamSim(EmbeddingMetric):
    """1 - cos of concatenated ViT features: DreamSim (center=True) or a plain ViT cosine metric.

    Built with random weights; :func:`build` (what ``robustsim.load`` calls) loads released ones.
    ``features(x)`` is the raw concatenation (1792-d for the ensemble), ``embed(x)`` the centred,
    unit-norm embedding; distances are differentiable in both inputs (an attack target), and
    :func:`teacher_embeddings` batches embeddings for distillation.

    Args:
        backbones: backbone names in concatenation order (see ``robustsim.backbones.vit.ARCHS``).
        center: subtract each embedding's mean before normalising (DreamSim); False for plain cosine.
        antialias: antialiased bicubic downsizing, like DreamSim's PIL resize (True) or plain bicubic.
        arch: architecture overrides per backbone (depth/width/heads/out_dim), for reduced test models.
        empty: leave parameters uninitialised (only when every weight is loaded right after).
    """

    def __init__(self, backbones: Sequence[str] = TYPES["ensemble"], center: bool = True, antialias: bool = True,
                 arch: Optional[Mapping[str, Mapping[str, int]]] = None, dreamsim_type: Optional[str] = None,
                 empty: bool = False):
        backbones = list(backbones)
        if not backbones:
            raise InputError("DreamSim needs at least one backbone")
        arch = {k: dict(v) for k, v in (arch or {}).items()}
        if set(arch) - set(backbones):
            raise InputError(f"arch overrides name backbones not in {backbones}: {sorted(set(arch) - set(backbones))}")
        if empty:  # uninitialised parameters (the caller loads every one): skips ~1 s of random init per ViT-B
            with torch.device("meta"):
                encoder = Concat(Branch(b, arch.get(b)) for b in backbones)
            encoder.to_empty(device="cpu")
            for b in encoder.branches:  # buffers are constants, not weights: recreate them
                a = vit.arch(b.backbone)
                b.mean, b.std = torch.tensor(a.mean).view(1, 3, 1, 1), torch.tensor(a.std).view(1, 3, 1, 1)
        else:
            encoder = Concat(Branch(b, arch.get(b)) for b in backbones)
        super().__init__(encoder, input_size=INPUT_SIZE, mean=None, std=None, resize_mode="bicubic",
                         antialias=antialias, center=center)
        self.backbones = backbones
        self.arch = arch
        self.dreamsim_type = dreamsim_type
        self.dims = [b.dim for b in encoder.branches]

    @property
    def embed_dim(self) -> int:
        return sum(self.dims)

    def branch_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per-backbone raw features of validated images (resized and normalised as DreamSim does)."""
        x = self.resize(x)
        return [b(x) for b in self.encoder.branches]

    def config(self) -> Dict[str, Any]:
        return {"backbones": list(self.backbones), "center": self.center, "antialias": self.resize.antialias,
                "arch": self.arch, "dreamsim_type": self.dreamsim_type}


@torch.no_grad()
def teacher_embeddings(metric: EmbeddingMetric, images: torch.Tensor, batch_size: int = 32,
                       progress: bool = True) -> torch.Tensor:
    """Embeddings (N, D) of many images in batches, without gradients: distillation targets.

    ``images`` is N×3×H×W in [0, 1] (a tensor or anything indexable into such batches).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    was_training = metric.training
    metric.eval()
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="teacher embeddings", disable=not progress):
            out.append(metric.embed(images[i:i + batch_size]))
    finally:
        metric.train(was_training)
    return torch.cat(out) if out else torch.empty(0, getattr(metric, "embed_dim", 0))


# --------------------------------------------------------------------------- loading released weights


def _fetch(wf: hub.WeightFile, explicit: Optional[str] = None) -> Path:
    """hub.fetch, plus trust-on-first-use for files without a published checksum.

    The first time a download without a known sha256 is used, its hash is written next to it
    (``<file>.sha256``) and checked on every later load, so a changed file is noticed.
    """
    path = hub.fetch(wf, explicit)
    if explicit is not None or wf.sha256:
        return path
    sidecar = path.with_name(path.name + ".sha256")
    digest = _sha256(path)
    if sidecar.is_file():
        want = sidecar.read_text().split()[0] if sidecar.read_text().split() else ""
        if want != digest:
            raise WeightsError(f"checksum mismatch for {path}: recorded sha256 {want} on first use, now {digest}")
    else:
        sidecar.write_text(f"{digest}  {path.name}\n")
        warnings.warn(f"{path.name} has no published checksum; recorded sha256 {digest} in {sidecar}", stacklevel=3)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _release_type(archive) -> Optional[str]:
    folders = archive.adapter_folders()
    if "ensemble_lora" in folders or {"dino_vitb16_lora", "clip_vitb16_lora"} <= set(folders):
        return "ensemble"
    for t in TYPES:
        if f"{t}_single_lora" in folders:
            return t
    return None


def _mismatch_hint(archive, dreamsim_type: str) -> str:
    found = _release_type(archive) if archive is not None else None
    if found is not None and found != dreamsim_type:
        return f"; it looks like a DreamSim {found!r} checkpoint: load it as dreamsim-{_hub_name(found)}"
    return ""


def _backbone_state(archive, backbone: str, trunk: Optional[Path], trunk_wf: Optional[hub.WeightFile],
                    dreamsim_type: str) -> Dict[str, torch.Tensor]:
    """A backbone's DINO-layout weights: explicit file > inside the release > the torch.hub file."""
    if trunk is not None:
        return vit.dino_layout(backbone, hub.load_state_dict(trunk), str(trunk))
    names = BACKBONE_FILES[backbone]
    if archive is not None:
        for n in names:
            rel = archive.find(n)
            if rel is not None:
                return vit.dino_layout(backbone, archive.load_tensors(rel), archive.where(rel))
    if trunk_wf is not None:
        path = _fetch(trunk_wf)
        return vit.dino_layout(backbone, hub.load_state_dict(path), str(path))
    raise WeightsError(f"{archive} has no {names[0]} (the {backbone} backbone){_mismatch_hint(archive, dreamsim_type)}")


def _adapter_folders(archive, dreamsim_type: str, backbones: List[str]):
    """(folder, model index or None) per backbone: the adapter that holds its LoRA weights."""
    if dreamsim_type == "ensemble":
        f = archive.folder("ensemble_lora")
        if f is not None:
            return [(f, i) for i in range(len(backbones))]
        per = [archive.folder(f"{b}_lora") for b in backbones]
        if all(p is not None for p in per):
            return [(p, None) for p in per]
        wanted = "ensemble_lora/ (or " + ", ".join(f"{b}_lora/" for b in backbones) + ")"
    else:
        f = archive.folder(f"{dreamsim_type}_single_lora")
        if f is not None:
            return [(f, None)]
        wanted = f"{dreamsim_type}_single_lora/"
    raise WeightsError(
        f"{archive} has no LoRA adapter {wanted} with adapter_config.json and "
        f"adapter_model.safetensors/.bin{_mismatch_hint(archive, dreamsim_type)}"
    )


def _is_release_zip(path: Path) -> bool:
    """A zip archive that is not itself a torch checkpoint (torch.save also writes zip files)."""
    import zipfile

    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as z:
        return not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in z.namelist())


def load_release(metric: DreamSim, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
                 dreamsim_type: Optional[str] = None, lora: bool = True,
                 spec: Optional[hub.ModelSpec] = None) -> DreamSim:
    """Load DreamSim release files (a directory or the zip) into a metric, merging its LoRA adapters.

    ``weights``: the release folder/zip (default: the hub download); for plain metrics also a single
    backbone file. ``trunk_weights``: the DINO / DINOv2 backbone file (or, for a single-backbone
    metric, its backbone file) when it is not inside the release.
    """
    from ..backbones.lora import Archive, merge, read_adapter

    main = spec.weights.get("main") if spec is not None else None
    trunk_wf = spec.weights.get("trunk") if spec is not None else None
    if main is not None and main in _TRUNK_FILES.values():  # plain DINO / DINOv2: the torch.hub file itself
        trunk_wf, main = main, None
    single = len(metric.backbones) == 1
    trunk = None if trunk_weights is None else Path(trunk_weights).expanduser()
    if trunk is not None and not trunk.is_file():
        raise WeightsError(f"trunk weights not found: {trunk}")
    archive = None
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_dir() or _is_release_zip(p):
            archive = Archive(p)
        elif p.is_file():
            if lora or not single:
                raise WeightsError(f"{p} is a single file; {metric.name or 'DreamSim'} needs a release folder or zip")
            trunk = p
        else:
            raise WeightsError(f"weights not found: {p}")
    elif main is not None and not (single and trunk is not None and not lora):
        archive = Archive(_fetch(main))
    t = dreamsim_type or "ensemble"
    adapters: Dict[PurePosixPath, Any] = {}
    try:
        if lora:
            if archive is None:
                raise WeightsError("DreamSim weights must be a release folder or zip")
            found = _release_type(archive)
            if found is not None and found != t:
                raise WeightsError(f"{archive} is a DreamSim {found!r} checkpoint, not {t!r}: "
                                   f"load it as dreamsim-{_hub_name(found)}")
            folders = _adapter_folders(archive, t, metric.backbones)
        for i, (backbone, branch) in enumerate(zip(metric.backbones, metric.encoder.branches)):
            uses_trunk = backbone in _TRUNK_FILES or single
            state = _backbone_state(archive, backbone, trunk if uses_trunk else None,
                                    trunk_wf if backbone in _TRUNK_FILES else None, t if lora else backbone)
            if lora:
                folder, idx = folders[i]
                if folder not in adapters:
                    adapters[folder] = read_adapter(archive, folder)
                ad = adapters[folder]
                if idx is not None and idx not in ad.models():
                    raise WeightsError(f"{ad.source} has no LoRA weights for model {idx} ({backbone})")
                state = merge(state, ad, idx, f"{ad.source} ({backbone})")
            vit.load_dino_layout(branch.net, backbone, state, f"{backbone} weights")
        for ad in adapters.values():
            extra = [m for m in ad.models() if m is not None and m >= len(metric.backbones)]
            if extra:
                raise WeightsError(f"{ad.source} has LoRA weights for models {extra}, but {t} has {len(metric.backbones)}")
    finally:
        if archive is not None:
            archive.close()
    return metric


def build(spec: hub.ModelSpec, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
          dreamsim_type: Optional[str] = None, backbones: Optional[Sequence[str]] = None, lora: bool = True,
          center: bool = True, antialias: bool = True, arch: Optional[Mapping[str, Mapping[str, int]]] = None,
          **kwargs: Any) -> DreamSim:
    """Hub builder: a DreamSim type (``dreamsim_type``) or plain backbones, with released weights."""
    if kwargs:
        raise InputError(f"unknown options for {spec.name}: {', '.join(sorted(kwargs))}")
    if dreamsim_type is not None:
        if dreamsim_type not in TYPES:
            raise InputError(f"unknown DreamSim type {dreamsim_type!r}; choose one of {', '.join(TYPES)}")
        backbones = TYPES[dreamsim_type]
    if not backbones:
        raise InputError(f"{spec.name}: no backbones given")
    vit.import_timm()
    if any(vit.arch(b).library == "open_clip" for b in backbones):
        vit.import_open_clip()
    metric = DreamSim(backbones, center=center, antialias=antialias, arch=arch, dreamsim_type=dreamsim_type, empty=True)
    metric.name = spec.name
    load_release(metric, weights, trunk_weights, dreamsim_type, lora, spec)
    metric.requires_grad_(False)  # frozen, like DreamSim; gradients still flow to the inputs
    return metric.eval()

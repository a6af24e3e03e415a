"""LipSim step 1: distil a teacher embedding into a 1-Lipschitz student (DESIGN §3.4).

Loss (per image, averaged over the batch and the two views): RMSE between the student's raw output
g(x) and the teacher's embedding of the same view, for a plain view (random crop + flip) and a
colour-jittered view (ColorJitter(0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale with p = 0.2).

Made for CPUs as much as GPUs: a fixed set of crops is drawn once, both views are stored as uint8 at
the student's input size and the teacher's embedding of every view is computed **once** and kept in
a memory-mapped cache (``views.u8``, ``targets.f32``, ``meta.json``). Training then never runs the
teacher. A cache made elsewhere (e.g. DreamSim embeddings computed on a GPU machine) can be given as
``teacher.embeddings``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import InputError
from .common import Recipe, mix
from .distributed import Dist
from .config import PhotoDataSection, RecipeConfig

CACHE_FORMAT = "robustsim-distill-cache/1"


# --------------------------------------------------------------------------- teacher cache


def teacher_targets(teacher: nn.Module, x: torch.Tensor, target: str = "features", scale: float = 1.0) -> torch.Tensor:
    """What the student learns to output: the teacher's raw features (centred when its cosine centres) or unit embedding."""
    if target == "embed" or not hasattr(teacher, "features"):
        out = teacher.embed(x)
    else:
        out = teacher.features(x)
        if getattr(teacher, "center", False):
            out = out - out.mean(dim=1, keepdim=True)
    return out.float() * scale


class ViewCache(Dataset):
    """Memory-mapped (plain, jittered) views and their teacher embeddings: items (plain, jit, t_plain, t_jit)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise InputError(f"{self.root} is not a teacher-embedding cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != CACHE_FORMAT or not self.meta.get("complete"):
            raise InputError(f"{self.root} holds an incomplete or foreign cache (format {self.meta.get('format')!r})")
        self.n, self.size, self.dim = int(self.meta["n"]), int(self.meta["size"]), int(self.meta["dim"])
        self._views: Optional[np.ndarray] = None
        self._targets: Optional[np.ndarray] = None

    def _open(self) -> None:  # lazily, so that each data-loader worker maps the files itself
        self._views = np.memmap(self.root / "views.u8", dtype=np.uint8, mode="r", shape=(self.n, 2, 3, self.size, self.size))
        self._targets = np.memmap(self.root / "targets.f32", dtype=np.float32, mode="r", shape=(self.n, 2, self.dim))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, ...]:
        if self._views is None:
            self._open()
        v = torch.from_numpy(np.array(self._views[i])).float().div_(255.0)
        t = torch.from_numpy(np.array(self._targets[i]))
        return v[0], v[1], t[0], t[1]

    def __getstate__(self) -> Dict[str, Any]:  # memmaps are reopened in worker processes
        d = dict(self.__dict__)
        d["_views"] = d["_targets"] = None
        return d


def photo_sources_for(d: PhotoDataSection) -> List[Any]:
    """Training photos: built-in train-split photos and the configured folders (never held-out photos)."""
    from ..data import photos

    dirs = list(d.folders) + [f for f in d.optional_folders if Path(f).expanduser().is_dir()]
    srcs = photos.photo_sources(dirs, include_gray=d.include_gray, builtin=d.builtin)
    srcs = [s for s in srcs if s.split == "train"]
    if not srcs:
        raise InputError("no training photos found (check data.builtin, data.folders and data.optional_folders)")
    return srcs


def cache_key(d: PhotoDataSection, teacher_desc: Dict[str, Any], seed: int, sources: List[Any]) -> str:
    """Hash of everything the cached views and targets depend on."""
    blob = json.dumps({
        "teacher": teacher_desc, "seed": seed, "photos": sorted(s.path or s.name for s in sources),
        "num_crops": d.num_crops, "size": d.view_size, "scales": list(d.crop_scales), "flip": d.flip,
        "jitter_p": d.jitter_p, "grayscale_p": d.grayscale_p,
        **({} if d.second_view == "jitter" else {"second_view": d.second_view}),  # old caches keep their key
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _write_meta(meta_path: Path, meta: Dict[str, Any]) -> None:
    tmp = meta_path.with_name("meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)


def second_view(plain: torch.Tensor, d: PhotoDataSection, seed: int, i: int) -> torch.Tensor:
    """The second stored view of crop i (1×3×S×S): colour-jittered, or distorted like a judged-suite candidate.

    Distorted views teach the student how the teacher moves under the distortions it will be asked to
    rank (blur, noise, compression, small geometric changes ...), not only under colour changes.
    """
    from ..data.augment import color_jitter

    rng = np.random.default_rng(mix(seed, i, 0xD15))
    mode = d.second_view
    if mode == "mixed":
        mode = "distort" if rng.random() < 0.5 else "jitter"
    if mode == "jitter":
        return color_jitter(plain, torch.Generator().manual_seed(mix(seed, i, 0xC01)), p=d.jitter_p,
                            gray_p=d.grayscale_p)
    from ..data.distortions import KINDS

    kind = list(KINDS.values())[int(rng.integers(len(KINDS)))]
    lo, hi = kind.judged
    strength = float(rng.uniform(lo, hi))
    return kind.fn(plain[0], strength, int(rng.integers(2 ** 31)))[None].clamp(0, 1)


def build_cache(root: Path, d: PhotoDataSection, teacher: nn.Module, key: str, sources: List[Any], seed: int,
                target: str = "features", scale: float = 1.0, batch_size: int = 32,
                device: Optional[torch.device] = None) -> ViewCache:
    """Draw the crops and views, run the teacher once on each view, and write the memory-mapped cache.

    Progress is recorded in meta.json after every batch: an interrupted build with the same key
    continues where it stopped; a cache with another key is rebuilt in place.
    """
    from tqdm.auto import tqdm

    from ..data import photos

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / "meta.json"
    n, s = d.num_crops, d.view_size
    tname = getattr(teacher, "name", "") or type(teacher).__name__
    meta = {"format": CACHE_FORMAT, "key": key, "n": n, "size": s, "dim": None, "complete": False, "done": 0,
            "teacher": tname, "target": target, "scale": scale}
    done, mode = 0, "w+"
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = {}
        if (old.get("key") == key and not old.get("complete") and old.get("dim") and int(old.get("done", 0)) > 0
                and (root / "views.u8").is_file() and (root / "targets.f32").is_file()):
            done, mode, meta["dim"] = int(old["done"]), "r+", int(old["dim"])  # continue an interrupted build
        meta_path.unlink()
    crops = photos.RandomCrops(n=n, size=s, scales=d.crop_scales, flip=d.flip, jitter_view=False, seed=seed,
                               sources=sources)
    device = device or torch.device("cpu")
    teacher = teacher.to(device).eval()
    vmap = np.memmap(root / "views.u8", dtype=np.uint8, mode=mode, shape=(n, 2, 3, s, s))
    tmap = None if meta["dim"] is None else np.memmap(root / "targets.f32", dtype=np.float32, mode=mode,
                                                        shape=(n, 2, meta["dim"]))
    starts = range(done, n, batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="teacher embeddings", unit="batch"):
            idx = list(range(start, min(n, start + batch_size)))
            plain = torch.stack([crops[i] for i in idx])
            jit = torch.cat([second_view(plain[k:k + 1], d, seed, i) for k, i in enumerate(idx)])
            both = torch.stack([plain, jit], 1)  # B×2×3×S×S
            q = (both * 255).round().clamp(0, 255).to(torch.uint8)
            x = q.float().div(255).flatten(0, 1).to(device)  # the teacher sees exactly the stored pixels
            t = teacher_targets(teacher, x, target, scale).cpu().view(len(idx), 2, -1)
            if tmap is None:
                meta["dim"] = int(t.shape[-1])
                tmap = np.memmap(root / "targets.f32", dtype=np.float32, mode="w+", shape=(n, 2, meta["dim"]))
            vmap[start:start + len(idx)] = q.numpy()
            tmap[start:start + len(idx)] = t.numpy()
            vmap.flush()
            tmap.flush()
            meta["done"] = idx[-1] + 1
            _write_meta(meta_path, meta)
    del vmap, tmap
    meta.update(complete=True, done=n)
    _write_meta(meta_path, meta)
    return ViewCache(root)


# --------------------------------------------------------------------------- recipe


def build_student(cfg: RecipeConfig, dim: int) -> nn.Module:
    """The student: model.name (hub name / saved file) or LipSim(**model.arch) (default: the CPU config)."""
    m = cfg.model
    if m.name:
        from ..hub import load

        student = load(m.name, weights=m.weights) if m.weights else load(m.name)
    else:
        from ..metrics.lipsim import CPU_DEFAULT, LipSim

        arch = {**CPU_DEFAULT.to_dict(), "embed_dim": dim, **m.arch}
        student = LipSim(**arch)
    if not hasattr(student, "features"):
        raise InputError(f"the student {type(student).__name__} has no features() (an embedding network is needed)")
    out_dim = getattr(getattr(student, "cfg", None), "embed_dim", None)
    if out_dim is not None and out_dim != dim:
        raise InputError(f"the student outputs {out_dim} coordinates but the teacher's embedding has {dim}; "
                         f"set model.arch.embed_dim: {dim}")
    for p in student.parameters():
        p.requires_grad_(True)
    return student


class DistillRecipe(Recipe):
    """Distillation of a teacher's embedding into a (Lipschitz) student; see the module docstring."""

    name = "distill"

    def __init__(self, cfg: RecipeConfig):
        super().__init__(cfg)
        self.cache: Optional[ViewCache] = None

    def cache_root(self) -> Path:
        if self.cfg.teacher.embeddings:
            return Path(self.cfg.teacher.embeddings).expanduser()
        d = self.cfg.data
        return Path(d.cache_dir).expanduser() if d.cache_dir else Path(self.cfg.out_dir).expanduser() / "teacher_cache"

    def prepare_cache(self, device: Optional[torch.device] = None) -> ViewCache:
        """Open the teacher cache, building it first if it is missing or stale (one process only)."""
        root = self.cache_root()
        if self.cfg.teacher.embeddings:
            return ViewCache(root)
        t, d = self.cfg.teacher, self.cfg.data
        sources = photo_sources_for(d)
        desc = {"name": t.name, "weights": t.weights, "target": t.target, "scale": t.scale}
        key = cache_key(d, desc, self.cfg.seed, sources)
        meta = root / "meta.json"
        if meta.is_file():
            try:
                m = json.loads(meta.read_text())
                if m.get("key") == key and m.get("complete"):
                    return ViewCache(root)
            except ValueError:
                pass
        if not t.name:
            raise InputError("teacher.name (a hub metric or saved file) or teacher.embeddings is required")
        from ..hub import load

        teacher = load(t.name, weights=t.weights) if t.weights else load(t.name)
        return build_cache(root, d, teacher, key, sources, self.cfg.seed, t.target, t.scale, t.batch_size, device)

    def setup(self, dist: Dist) -> None:
        if dist.is_main:
            self.prepare_cache(dist.device)
        dist.barrier()
        self.cache = ViewCache(self.cache_root())
        if self.cache.size < 1:
            raise InputError("empty teacher cache")

    def dataset(self) -> Dataset:
        assert self.cache is not None
        return self.cache

    def build(self, device: torch.device) -> nn.Module:
        assert self.cache is not None
        return build_student(self.cfg, self.cache.dim)

    def prepare(self, module: nn.Module, batch: Tuple[torch.Tensor, ...], ctx) -> Tuple[torch.Tensor, ...]:
        if self.cfg.data.view_mode == "both":
            return batch
        # one view per crop, chosen for the whole global batch so that N processes match one process
        plain, jit, tp, tj = batch
        n = plain.shape[0]
        pick = torch.rand(n * ctx.dist.world, generator=ctx.generator(per_rank=False, device=torch.device("cpu")))
        pick = (pick[ctx.dist.rank * n:(ctx.dist.rank + 1) * n] < 0.5).to(plain.device)
        m = pick.view(-1, 1, 1, 1)
        return torch.where(m, jit, plain), torch.where(pick.view(-1, 1), tj, tp)

    def loss(self, module: nn.Module, batch: Tuple[torch.Tensor, ...]):
        if len(batch) == 2:  # view_mode: random
            x, t = batch
            g = module.features(x).float()
        else:
            plain, jit, tp, tj = batch
            g = module.features(torch.cat([plain, jit])).float()  # the loss in float32, also under autocast
            t = torch.cat([tp, tj]).float()
        per = ((g - t).pow(2).mean(dim=1) + 1e-12).sqrt()  # RMSE per view
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(g.float(), t.float(), dim=1).mean()
        return per.mean(), {"cos": float(cos)}

    def export(self, module: nn.Module, out_dir: Path) -> Path:
        from ..hub import save

        module.name = module.name or "lipsim-distilled"
        return save(module, out_dir / "model.safetensors", recipe="distill")

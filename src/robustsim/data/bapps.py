"""BAPPS (Zhang et al. 2018) readers: 2AFC train/val with every category, and JND.

Layout (as extracted from the official archives, see :mod:`robustsim.data.fetch`)::

    ROOT/2afc/{train,val}/CATEGORY/{ref,p0,p1}/NNNNNN.png   + ROOT/2afc/{train,val}/CATEGORY/judge/NNNNNN.npy
    ROOT/jnd/val/{traditional,cnn}/{p0,p1}/NNNNNN.png      + ROOT/jnd/val/CATEGORY/same/NNNNNN.npy

``judge`` is the fraction of people who preferred p1; ``same`` the fraction who judged p0 and p1
identical. Items are indexed by the file stems of ``ref`` (2AFC) or ``p0`` (JND); a stem that lacks
any of its companion files is a layout error naming the category, the folder and example stems.
Images are decoded on access; a broken file raises :class:`~robustsim.errors.CorruptImageError`
(the evaluation loop skips and counts such items by default).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import CorruptImageError, InputError
from ..images import read_image
from .photos import TripletDataset

PathLike = Union[str, os.PathLike]

TWOAFC_CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "train": ("traditional", "cnn", "mix"),
    "val": ("traditional", "cnn", "superres", "deblur", "color", "frameinterp"),
}
JND_CATEGORIES: Tuple[str, ...] = ("traditional", "cnn")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp")


def _stems(folder: Path, exts: Sequence[str]) -> Dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts}


def _show(names: Sequence[str], k: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:k]) + (f" (+{len(names) - k} more)" if len(names) > k else "")


def _find_root(root: PathLike, sub: str) -> Path:
    r = Path(root).expanduser()
    if not r.is_dir():
        raise InputError(f"dataset root not found: {r}")
    if (r / sub).is_dir():
        return r / sub
    if r.name == sub:
        return r
    raise InputError(f"{r} is not a BAPPS root: no '{sub}/' folder inside (expected {r / sub})")


def _load_scalar(path: Path, what: str) -> float:
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CorruptImageError(f"cannot read {what} file {path}: {e}") from e
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size != 1 or not np.isfinite(a[0]) or not 0.0 <= a[0] <= 1.0:
        raise CorruptImageError(f"{what} file {path} must hold one value in [0, 1], got {a[:4]}")
    return float(a[0])


def _resize(img: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    if size is None or tuple(img.shape[-2:]) == (size, size):
        return img
    return F.interpolate(img[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


def _select_categories(split_cats: Sequence[str], categories: Optional[Sequence[str]], what: str) -> List[str]:
    if categories is None:
        return list(split_cats)
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    bad = [c for c in categories if c not in split_cats]
    if bad:
        raise InputError(f"unknown {what} categories {bad}; choose from {', '.join(split_cats)}")
    if not categories:
        raise InputError(f"empty {what} category selection")
    return list(categories)


class BAPPS2AFC(TripletDataset):
    """BAPPS 2AFC triplets ``(ref, p0, p1, label, judge)``; ``label`` = 1 when most judges preferred p1.

    Args:
        root: folder containing ``2afc/`` (or the ``2afc`` folder itself).
        split: ``train`` or ``val``.
        categories: subset of the split's categories (default: all of them).
        load_size: resize every image to load_size² (the official loader uses 64); None keeps it.
        limit: keep at most this many triplets per category (first stems in sorted order).
    """

    def __init__(self, root: PathLike, split: str = "val", categories: Optional[Sequence[str]] = None,
                 load_size: Optional[int] = 64, limit: Optional[int] = None):
        if split not in TWOAFC_CATEGORIES:
            raise InputError(f"unknown BAPPS 2AFC split {split!r}; choose train or val")
        base = _find_root(root, "2afc") / split
        if not base.is_dir():
            raise InputError(f"BAPPS split folder missing: {base} (extract twoafc_{split}.tar.gz into {base.parent})")
        self.split, self.load_size = split, load_size
        self.categories = _select_categories(TWOAFC_CATEGORIES[split], categories, f"BAPPS 2AFC {split}")
        self.items: List[Tuple[str, Path, Path, Path, Path]] = []
        problems = []
        for cat in self.categories:
            d = base / cat
            missing_dirs = [s for s in ("ref", "p0", "p1", "judge") if not (d / s).is_dir()]
            if missing_dirs:
                problems.append(f"{d}: missing folder(s) {', '.join(missing_dirs)}")
                continue
            ref, p0, p1 = (_stems(d / s, IMAGE_EXT) for s in ("ref", "p0", "p1"))
            judge = _stems(d / "judge", (".npy",))
            if not ref:
                problems.append(f"{d / 'ref'}: no images")
                continue
            for what, have in (("p0 images", p0), ("p1 images", p1), ("judge files", judge)):
                lack = set(ref) - set(have)
                if lack:
                    problems.append(f"{d}: missing {what} for {len(lack)} of {len(ref)} triplets: {_show(list(lack))}")
            stems = sorted(set(ref) & set(p0) & set(p1) & set(judge))
            if limit is not None:
                stems = stems[: int(limit)]
            self.items += [(cat, ref[s], p0[s], p1[s], judge[s]) for s in stems]
        if problems:
            raise InputError("BAPPS layout problem: " + "; ".join(problems))
        if not self.items:
            raise InputError(f"empty selection: no BAPPS 2AFC triplets in {base} for {self.categories}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        cat, r, a, b, j = self.items[i]
        judge = _load_scalar(j, "judge")
        imgs = [_resize(read_image(p), self.load_size) for p in (r, a, b)]
        return imgs[0], imgs[1], imgs[2], int(judge > 0.5), judge

    def group(self, i: int) -> str:
        return self.items[i][0]

    def info(self, i: int) -> Dict[str, object]:
        cat, r, _, _, j = self.items[i]
        return {"category": cat, "id": r.stem, "ref": str(r)}


class BAPPSJND(Dataset):
    """BAPPS JND pairs ``(p0, p1, same)``: ``same`` is the fraction of people who saw no difference."""

    def __init__(self, root: PathLike, categories: Optional[Sequence[str]] = None, load_size: Optional[int] = 64,
                 limit: Optional[int] = None, split: str = "val"):
        if split != "val":
            raise InputError(f"BAPPS JND only has a 'val' split, got {split!r}")
        base = _find_root(root, "jnd") / "val"
        if not base.is_dir():
            raise InputError(f"BAPPS JND folder missing: {base} (extract jnd.tar.gz into {Path(root)})")
        self.load_size = load_size
        self.categories = _select_categories(JND_CATEGORIES, categories, "BAPPS JND")
        self.items: List[Tuple[str, Path, Path, Path]] = []
        problems = []
        for cat in self.categories:
            d = base / cat
            missing_dirs = [s for s in ("p0", "p1", "same") if not (d / s).is_dir()]
            if missing_dirs:
                problems.append(f"{d}: missing folder(s) {', '.join(missing_dirs)}")
                continue
            p0, p1 = _stems(d / "p0", IMAGE_EXT), _stems(d / "p1", IMAGE_EXT)
            same = _stems(d / "same", (".npy",))
            if not p0:
                problems.append(f"{d / 'p0'}: no images")
                continue
            for what, have in (("p1 images", p1), ("same files", same)):
                lack = set(p0) - set(have)
                if lack:
                    problems.append(f"{d}: missing {what} for {len(lack)} of {len(p0)} pairs: {_show(list(lack))}")
            stems = sorted(set(p0) & set(p1) & set(same))
            if limit is not None:
                stems = stems[: int(limit)]
            self.items += [(cat, p0[s], p1[s], same[s]) for s in stems]
        if problems:
            raise InputError("BAPPS JND layout problem: " + "; ".join(problems))
        if not self.items:
            raise InputError(f"empty selection: no JND pairs in {base} for {self.categories}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        _, a, b, s = self.items[i]
        same = _load_scalar(s, "same")
        return _resize(read_image(a), self.load_size), _resize(read_image(b), self.load_size), same

    def group(self, i: int) -> str:
        return self.items[i][0]


def bapps_2afc(root: PathLike, split: str = "val", size: Optional[int] = 64,
               categories: Optional[Sequence[str]] = None, limit: Optional[int] = None) -> BAPPS2AFC:
    """Registry factory (``data/registry.py``) for :class:`BAPPS2AFC`."""
    return BAPPS2AFC(root, split, categories, load_size=size, limit=limit)


def bapps_jnd(root: PathLike, split: str = "val", size: Optional[int] = 64,
              categories: Optional[Sequence[str]] = None, limit: Optional[int] = None) -> BAPPSJND:
    """Registry factory (``data/registry.py``) for :class:`BAPPSJND`."""
    return BAPPSJND(root, categories, load_size=size, limit=limit, split=split)

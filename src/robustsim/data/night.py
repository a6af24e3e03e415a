"""NIGHTS (Fu et al. 2023, DreamSim) reader.

Layout::

    ROOT/data.csv        columns id, left_vote, right_vote, votes, ref_path, left_path, right_path, split, is_imagenet
    ROOT/ref/NNN/MMM.png, ROOT/distort/NNN/MMM_0.png, ROOT/distort/NNN/MMM_1.png   (paths relative to ROOT)

Following the official loader, only rows with ``votes >= 6`` (unanimous judgments) are kept. Splits:
``train``, ``val``, ``test``, ``test_imagenet``, ``test_no_imagenet``. ``judge`` = right_vote /
(left_vote + right_vote) (the fraction preferring the right image; 0/1 in the released file), the
label is the majority. Images are resized to ``load_size`` (224, bicubic) as in DreamSim.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..images import read_image
from .photos import TripletDataset

PathLike = Union[str, os.PathLike]
COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
SPLITS = ("train", "val", "test", "test_imagenet", "test_no_imagenet")
MIN_VOTES = 6


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise ValueError(f"not a boolean: {s!r}")


class Nights(TripletDataset):
    """NIGHTS triplets ``(ref, left, right, label, judge)``; group(i) is ``imagenet`` or ``no_imagenet``.

    Args:
        root: folder with data.csv, ref/ and distort/ (or its parent containing ``nights/``).
        split: one of :data:`SPLITS`.
        min_votes: keep rows with votes >= min_votes (6, as the paper).
        load_size: resize to load_size² (None keeps the stored size).
        limit: keep at most this many rows (after filtering), for quick runs.
        check_files: verify at construction that every image path exists (names the missing ones).
    """

    def __init__(self, root: PathLike, split: str = "test", min_votes: int = MIN_VOTES,
                 load_size: Optional[int] = 224, limit: Optional[int] = None, check_files: bool = True):
        if split not in SPLITS:
            raise InputError(f"unknown NIGHTS split {split!r}; choose from {', '.join(SPLITS)}")
        r = Path(root).expanduser()
        if not r.is_dir():
            raise InputError(f"dataset root not found: {r}")
        if not (r / "data.csv").is_file() and (r / "nights" / "data.csv").is_file():
            r = r / "nights"
        table = r / "data.csv"
        if not table.is_file():
            raise InputError(f"{r} is not a NIGHTS root: data.csv missing (expected {table})")
        self.root, self.split, self.load_size = r, split, load_size
        with open(table, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            lack = [c for c in COLUMNS if c not in cols]
            if lack:
                raise InputError(f"{table}: missing column(s) {', '.join(lack)} (found {', '.join(cols)})")
            rows = list(reader)
        base_split = "test" if split.startswith("test") else split
        self.rows: List[Dict[str, object]] = []
        for k, row in enumerate(rows):
            try:
                votes = float(row["votes"])
                lv, rv = float(row["left_vote"]), float(row["right_vote"])
                imagenet = _bool(row["is_imagenet"])
            except ValueError as e:
                raise InputError(f"{table}: malformed row {k + 2}: {e}") from e
            if votes < min_votes or row["split"].strip() != base_split:
                continue
            if split == "test_imagenet" and not imagenet or split == "test_no_imagenet" and imagenet:
                continue
            if lv + rv <= 0:
                raise InputError(f"{table}: row {k + 2} has left_vote + right_vote = 0")
            self.rows.append({"id": row["id"], "judge": rv / (lv + rv), "imagenet": imagenet,
                              "paths": tuple(r / row[c] for c in ("ref_path", "left_path", "right_path"))})
        if limit is not None:
            self.rows = self.rows[: int(limit)]
        if not self.rows:
            raise InputError(f"empty selection: no NIGHTS rows with split {split!r} and votes >= {min_votes} in {table}")
        if check_files:
            missing = [str(p.relative_to(r)) for row in self.rows for p in row["paths"] if not p.is_file()]
            if missing:
                more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
                raise InputError(f"NIGHTS layout problem: {len(missing)} image file(s) listed in data.csv are missing "
                                 f"under {r}: {', '.join(missing[:3])}{more}")

    def __len__(self) -> int:
        return len(self.rows)

    def _img(self, p: Path) -> torch.Tensor:
        x = read_image(p)
        s = self.load_size
        if s is None or tuple(x.shape[-2:]) == (s, s):
            return x
        return F.interpolate(x[None], size=(s, s), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)

    def __getitem__(self, i: int):
        row = self.rows[i]
        ref, left, right = (self._img(p) for p in row["paths"])
        j = float(row["judge"])
        return ref, left, right, int(j > 0.5), j

    def group(self, i: int) -> str:
        return "imagenet" if self.rows[i]["imagenet"] else "no_imagenet"

    def info(self, i: int) -> Dict[str, object]:
        row = self.rows[i]
        return {"id": row["id"], "imagenet": row["imagenet"], "ref": str(row["paths"][0])}


def nights(root: PathLike, split: str = "test", size: Optional[int] = 224, **options) -> Nights:
    """Registry factory (``data/registry.py``) for :class:`Nights`."""
    return Nights(root, split=split, load_size=size, **options)

"""Small datasets in the exact BAPPS / NIGHTS layouts, made of real photo crops (shared by data and evaluation tests)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robustsim.data import photos as P


def _save(t: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(path)


def make_bapps_2afc(root: Path, split: str = "val", cats=("traditional", "cnn"), n: int = 4, size: int = 32, seed: int = 0):
    """Write ROOT/2afc/SPLIT/CAT/{ref,p0,p1,judge}; returns the judge values in reading order."""
    suite = P.OrderingSuite(n=n * len(cats), size=size, seed=seed, split="all")
    rng = np.random.default_rng(seed)
    judges = []
    k = 0
    for cat in cats:
        d = root / "2afc" / split / cat
        for i in range(n):
            ref, x0, x1, lab, _ = suite[k]
            k += 1
            stem = f"{i:06d}"
            _save(ref, d / "ref" / f"{stem}.png")
            _save(x0, d / "p0" / f"{stem}.png")
            _save(x1, d / "p1" / f"{stem}.png")
            j = float(rng.uniform(0.0, 0.4)) if lab == 0 else float(rng.uniform(0.6, 1.0))
            (d / "judge").mkdir(parents=True, exist_ok=True)
            np.save(d / "judge" / f"{stem}.npy", np.array([j], dtype=np.float32))
            judges.append(j)
    return judges


def make_bapps_jnd(root: Path, cats=("traditional", "cnn"), n: int = 5, size: int = 32, seed: int = 0):
    suite = P.OrderingSuite(n=n * len(cats), size=size, seed=seed + 1, split="all")
    rng = np.random.default_rng(seed)
    sames = []
    k = 0
    for cat in cats:
        d = root / "jnd" / "val" / cat
        for i in range(n):
            ref, x0, _, _, _ = suite[k]
            k += 1
            stem = f"{i:06d}"
            _save(ref, d / "p0" / f"{stem}.png")
            _save(x0, d / "p1" / f"{stem}.png")
            (d / "same").mkdir(parents=True, exist_ok=True)
            s = float(rng.choice([0.0, 0.5, 1.0]))
            np.save(d / "same" / f"{stem}.npy", np.array([s], dtype=np.float32))
            sames.append(s)
    return sames


def make_nights(root: Path, n: int = 8, size: int = 32, seed: int = 0, votes=None):
    """Write ROOT/data.csv, ROOT/ref/000/MMM.png, ROOT/distort/000/MMM_{0,1}.png."""
    suite = P.OrderingSuite(n=n, size=size, seed=seed + 2, split="all")
    rows = []
    for i in range(n):
        ref, x0, x1, lab, _ = suite[i]
        g = f"{i // 4:03d}"
        m = f"{i % 4:03d}"
        _save(ref, root / "ref" / g / f"{m}.png")
        _save(x0, root / "distort" / g / f"{m}_0.png")
        _save(x1, root / "distort" / g / f"{m}_1.png")
        v = votes[i] if votes is not None else 6 + (i % 3)
        rows.append({"id": i, "left_vote": 1 - lab, "right_vote": lab, "votes": v,
                     "ref_path": f"ref/{g}/{m}.png", "left_path": f"distort/{g}/{m}_0.png",
                     "right_path": f"distort/{g}/{m}_1.png", "split": ["train", "val", "test", "test"][i % 4] if n > 8 else "test",
                     "is_imagenet": "True" if i % 2 else "False"})
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows

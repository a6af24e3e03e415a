"""2AFC training data for the recipes: one adapter from a config section to ``(ref, x0, x1, judge)``.

``judge`` is the fraction of judges preferring x1 (BAPPS convention): 1.0 means x1 is the closer one.
Sources: BAPPS (``data/bapps.py``), NIGHTS (``data/night.py``), the offline photo suites
(``data/photos.py``: ordering and teacher-labelled; ``data/judged.py``: labelled by the consensus of
human-calibrated metrics) and a tensor file (``.pt``/``.safetensors`` with
``ref``, ``x0``, ``x1`` and ``judge`` or ``label``) for data prepared elsewhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import InputError
from .config import TripletDataSection


class TripletTrainData(Dataset):
    """Wraps a 2AFC dataset: items ``(ref, x0, x1, judge)`` at size×size, float32 in [0, 1]."""

    def __init__(self, base: Dataset, size: int, limit: int = None):
        self.base = base
        self.size = int(size)
        self.n = len(base) if limit is None else min(int(limit), len(base))
        if self.n == 0:
            raise InputError("the 2AFC training set is empty")

    def __len__(self) -> int:
        return self.n

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[-2:]) != (self.size, self.size):
            mode = dict(mode="area") if x.shape[-1] > self.size else dict(mode="bicubic", align_corners=False)
            x = F.interpolate(x[None], size=(self.size, self.size), **mode)[0].clamp(0, 1)
        return x

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, ...]:
        item = self.base[i]
        if len(item) == 5:  # (ref, x0, x1, label, judge)
            ref, x0, x1, _, judge = item
        elif len(item) == 4:
            ref, x0, x1, judge = item
        else:
            raise InputError(f"a 2AFC dataset item must be (ref, x0, x1, [label,] judge), got {len(item)} fields")
        return self._fit(ref), self._fit(x0), self._fit(x1), torch.as_tensor(float(judge), dtype=torch.float32)


class TensorTriplets(Dataset):
    """Triplets stored as tensors in one file (uint8 or float images)."""

    def __init__(self, path: str):
        from ..hub import load_state_dict

        p = Path(path).expanduser()
        state = load_state_dict(p)
        missing = [k for k in ("ref", "x0", "x1") if k not in state]
        if missing or ("judge" not in state and "label" not in state):
            raise InputError(f"{p} must hold tensors ref, x0, x1 and judge (or label); missing {missing or ['judge']}")
        self.ref, self.x0, self.x1 = state["ref"], state["x0"], state["x1"]
        self.judge = state["judge"].float() if "judge" in state else state["label"].float()
        n = self.ref.shape[0]
        if not (self.x0.shape[0] == self.x1.shape[0] == self.judge.shape[0] == n):
            raise InputError(f"{p}: ref, x0, x1 and judge have different lengths")

    def __len__(self) -> int:
        return self.ref.shape[0]

    def _img(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() / 255 if t.dtype == torch.uint8 else t.float()

    def __getitem__(self, i: int):
        return self._img(self.ref[i]), self._img(self.x0[i]), self._img(self.x1[i]), self.judge[i]


def build_triplets(d: TripletDataSection, seed: int = 0) -> TripletTrainData:
    """The dataset a config section describes (paths were checked when the config was read)."""
    opts = dict(d.options)
    if d.kind == "tensors":
        base = TensorTriplets(d.root)
    elif d.kind == "bapps":
        from ..data import bapps

        base = bapps.BAPPS2AFC(d.root, split=d.split, categories=d.subsets, load_size=d.size, **opts)
    elif d.kind == "nights":
        from ..data import night

        base = night.Nights(d.root, split=d.split, load_size=d.size, **opts)
    elif d.kind in ("photos-ordering", "photos-teacher"):
        from ..data import photos

        n = opts.pop("n", d.limit or 256)
        extra = opts.pop("extra_dirs", None)
        if d.kind == "photos-ordering":
            base = photos.OrderingSuite(n=n, size=d.size, split=d.split, seed=opts.pop("seed", seed),
                                        extra_dirs=extra, **opts)
        else:
            from ..hub import load

            teacher = load(opts.pop("teacher", "effnet-lite0-cosine"))
            base = photos.TeacherSuite(teacher, n=n, size=d.size, split=d.split, seed=opts.pop("seed", seed),
                                       extra_dirs=extra, **opts)
    elif d.kind == "judged":
        from ..data.judged import judged_triplets

        n = opts.pop("n", d.limit or 1000)
        base = judged_triplets(n, split=d.split, size=d.size, seed=opts.pop("seed", seed), **opts)
    else:  # pragma: no cover - rejected by config validation
        raise InputError(f"unknown data.kind {d.kind!r}")
    return TripletTrainData(base, d.size, d.limit)

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
from torch.utils.data import ConcatDataset, Dataset

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
        j = float(judge)
        if not 0.0 <= j <= 1.0:  # NaN fails too
            src = getattr(self.base, "path", None) or getattr(self.base, "root", None) or type(self.base).__name__
            raise InputError(f"{src}: triplet {i} has label {j!r}, missing or outside [0, 1]; labels must be the "
                             f"fraction of judges preferring x1")
        return self._fit(ref), self._fit(x0), self._fit(x1), torch.as_tensor(j, dtype=torch.float32)


def check_judgments(j: torch.Tensor, where: str) -> torch.Tensor:
    """Soft 2AFC labels as float32 (N,): refuse NaN/Inf and values outside [0, 1], naming ``where``.

    A label outside [0, 1] makes the ranking BCE meaningless (negative loss, the head pushed past
    certainty); NaN silently poisons the first batch that holds it. Neither is trained on.
    """
    if not isinstance(j, torch.Tensor) or j.dim() > 1 or j.is_complex():
        raise InputError(f"{where} must be a 1-D tensor of values in [0, 1] (fraction preferring x1), "
                         f"got {type(j).__name__} {tuple(getattr(j, 'shape', ()))}")
    j = j.reshape(-1).float()
    bad = ~(torch.isfinite(j) & (j >= 0) & (j <= 1))
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        raise InputError(f"{where}: {idx.numel()} label(s) missing or outside [0, 1] (first at index {int(idx[0])}: "
                         f"{float(j[idx[0]])!r}); labels must be the fraction of judges preferring x1")
    return j


class TensorTriplets(Dataset):
    """Triplets stored as tensors in one file (uint8 or float images)."""

    def __init__(self, path: str):
        from ..hub import load_state_dict

        p = Path(path).expanduser()
        state = load_state_dict(p)
        missing = [k for k in ("ref", "x0", "x1") if k not in state]
        if missing or ("judge" not in state and "label" not in state):
            raise InputError(f"{p} must hold tensors ref, x0, x1 and judge (or label); missing {missing or ['judge']}")
        self.path = p
        self.ref, self.x0, self.x1 = state["ref"], state["x0"], state["x1"]
        key = "judge" if "judge" in state else "label"
        self.judge = check_judgments(state[key], f"{p}: {key}")
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
    from ..data.registry import build_dataset

    parts = d.parts or []
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise InputError(f"data.parts must be a list of option mappings, got {parts!r}")

    def one(options: dict) -> Dataset:
        opts = dict(options)
        # label_size: the side the dataset is built (and, for the judged suite, labelled) at; the model trains at
        # d.size, upsampled with the suite's bicubic resize, as evaluate_judged shows it to a 128-px metric.
        size = int(opts.pop("label_size", d.size))
        return build_dataset(d.kind, root=opts.pop("root", d.root), split=d.split, size=size, n=opts.pop("n", d.limit),
                             seed=opts.pop("seed", seed), categories=d.subsets, **opts)

    sets = [one(d.options)] + [one({**d.options, **p}) for p in parts]
    base = sets[0] if len(sets) == 1 else ConcatDataset(sets)
    return TripletTrainData(base, d.size, d.limit)


def tensor_triplets(root: str) -> TensorTriplets:
    """Dataset-registry factory (``data/registry.py``): ``root`` is the tensor file."""
    return TensorTriplets(root)

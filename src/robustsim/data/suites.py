"""2AFC suites on the catalogue's photos: ordering (known answer) and teacher-labelled triplets,
plus random crops for distillation.

Suites (torch Datasets returning ``(ref, x0, x1, label, judge)``, images 3×S×S in [0, 1];
``label`` is 0 when x0 is the closer one, ``judge`` the fraction preferring x1 as in BAPPS):

* :class:`OrderingSuite` -- a reference crop and the *same* distortion at two strengths with the same
  random realisation; the weaker one is the correct "closer" (the 11 kinds of
  :data:`~robustsim.data.distortions.ORDERING_KINDS` by default). A smoke test: every sane metric,
  random networks included, scores ~100 %.
* :class:`TeacherSuite` -- two distortions of *different* kinds; the label is which is closer
  according to a reference metric (computed in batches at construction).

The judge-consensus suite (the perceptual headline) lives in :mod:`robustsim.data.judged`, and
:class:`RandomCrops` (multi-scale crops, flips, colour jitter) serves distillation.

Everything is a pure function of (seed, index): item i is the same whatever the order, the number of
workers or the process that asks for it.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .catalogue import PhotoSource, item_rng, random_crop, select_photos, textured_crop
from .augment import color_jitter
from .distortions import DISTORTIONS, ORDERING_KINDS, distort

PathLike = Union[str, os.PathLike]


class TripletDataset(Dataset):
    """Base of every 2AFC dataset: items are ``(ref, x0, x1, label, judge)``.

    ``label`` (int64): 0 when x0 is the closer/correct one. ``judge`` (float32): fraction of judges
    preferring x1 (BAPPS convention; 0.0 or 1.0 for synthetic labels). :meth:`info` describes item i.
    """

    def info(self, i: int) -> Dict[str, object]:
        """Metadata of item i (photo, kind, ...), without decoding images where possible."""
        return {}

    def group(self, i: int) -> str:
        """The reporting group of item i (BAPPS category, NIGHTS ImageNet/non-ImageNet, distortion kind)."""
        return "all"

    def tensors(self, indices: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, ...]:
        """Stack items into batched tensors (ref, x0, x1, label, judge)."""
        idx = range(len(self)) if indices is None else indices
        items = [self[i] for i in idx]
        if not items:
            raise InputError("empty selection: no triplets to stack")
        ref, x0, x1, lab, j = zip(*items)
        return (torch.stack(ref), torch.stack(x0), torch.stack(x1),
                torch.as_tensor(lab, dtype=torch.long), torch.as_tensor(j, dtype=torch.float32))


def _check_common(n: int, size: int, split: str) -> None:
    if int(n) <= 0:
        raise InputError(f"suite size must be positive, got n={n}")
    if int(size) < 16:
        raise InputError(f"crop size must be at least 16 px, got {size}")


class _CropSuite(TripletDataset):
    """Shared set-up of the synthetic suites: n items drawn from (seed, index), each from a textured
    crop of one photo of ``split``, distorted by kinds from :data:`DISTORTIONS` (default :data:`ORDERING_KINDS`)."""

    def _setup(self, n, size, split, kinds, seed, extra_dirs, scale, include_gray, min_kinds: int = 1,
               too_few: str = "") -> None:
        _check_common(n, size, split)
        self.kinds = list(kinds) if kinds else list(ORDERING_KINDS)
        if len(self.kinds) < min_kinds:
            raise InputError(too_few)
        for k in self.kinds:
            if k not in DISTORTIONS:
                raise InputError(f"unknown distortion {k!r}; choose from {', '.join(DISTORTIONS)}")
        self.sources = select_photos(split, extra_dirs, include_gray)
        self.n, self.size, self.split, self.seed = int(n), int(size), split, int(seed)
        self.scale = tuple(scale)

    def __len__(self) -> int:
        return self.n

    def _draw(self, i: int, salt: str):
        """(rng, crop, photo source) of item i: the item's own RNG, after drawing its crop."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = item_rng(self.seed, i, salt)
        crop, src = textured_crop(self.sources, rng, self.size, self.scale)
        return rng, crop, src


class OrderingSuite(_CropSuite):
    """Reference crop + one distortion at two strengths; the weaker is the correct "closer".

    Args:
        n: number of triplets. size: crop side (64 for LPIPS, 224 for ViT-like metrics).
        split: photo split (``heldout`` by default: evaluation never sees training photos).
        kinds: distortion kinds (default: the 11 :data:`~robustsim.data.distortions.ORDERING_KINDS`, cycled so
            each kind gets n/k items; any kind of :data:`DISTORTIONS` may be named).
        weak, gap: weak strength ~ U(weak); strong = min(1, weak_s + U(gap)).
        scale: crop side as a fraction of the photo's short side.
        seed: everything is a function of (seed, index).
    """

    def __init__(self, n: int = 256, size: int = 64, split: str = "heldout", kinds: Optional[Sequence[str]] = None,
                 seed: int = 0, extra_dirs: Optional[Iterable[PathLike]] = None,
                 weak: Tuple[float, float] = (0.05, 0.45), gap: Tuple[float, float] = (0.3, 0.55),
                 scale: Tuple[float, float] = (0.2, 0.6), include_gray: bool = False):
        self._setup(n, size, split, kinds, seed, extra_dirs, scale, include_gray)
        self.weak, self.gap = tuple(weak), tuple(gap)

    def _params(self, i: int):
        rng, crop, src = self._draw(i, "ordering")
        kind = self.kinds[i % len(self.kinds)]
        s_weak = float(rng.uniform(*self.weak))
        s_strong = float(min(1.0, s_weak + rng.uniform(*self.gap)))
        dseed = int(rng.integers(2**62))
        swap = bool(rng.integers(2))  # True: the weak one goes to x1
        return crop, src, kind, s_weak, s_strong, dseed, swap

    def __getitem__(self, i: int):
        crop, _, kind, sw, ss, dseed, swap = self._params(i)
        weak = distort(crop, kind, sw, dseed)
        strong = distort(crop, kind, ss, dseed)
        x0, x1 = (strong, weak) if swap else (weak, strong)
        label = 1 if swap else 0
        return crop, x0, x1, label, float(label)

    def group(self, i: int) -> str:
        return self.kinds[i % len(self.kinds)]

    def info(self, i: int) -> Dict[str, object]:
        _, src, kind, sw, ss, _, swap = self._params(i)
        return {"photo": src.name, "kind": kind, "weak": sw, "strong": ss, "label": int(swap)}


class _PairSuite(_CropSuite):
    """Reference crop + two distortions of different kinds at independent strengths (unlabelled)."""

    def __init__(self, n, size, split, kinds, seed, extra_dirs, strength, scale, include_gray):
        self._setup(n, size, split, kinds, seed, extra_dirs, scale, include_gray, min_kinds=2,
                    too_few="a teacher-labelled suite needs at least two distortion kinds")
        self.strength = tuple(strength)

    def _params(self, i: int):
        rng, crop, src = self._draw(i, "teacher")
        a, b = rng.choice(len(self.kinds), size=2, replace=False)
        s0, s1 = (float(v) for v in rng.uniform(*self.strength, size=2))
        d0, d1 = (int(v) for v in rng.integers(2**62, size=2))
        return crop, src, self.kinds[a], self.kinds[b], s0, s1, d0, d1

    def images(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        crop, _, k0, k1, s0, s1, d0, d1 = self._params(i)
        return crop, distort(crop, k0, s0, d0), distort(crop, k1, s1, d1)


class TeacherSuite(_PairSuite):
    """Two distortions of different kinds; label = which one ``teacher`` finds closer to the reference.

    The teacher distances are computed once, in batches of ``batch_size``, at construction (shown with
    a progress bar); images are regenerated on demand. With ``cache_dir`` they are also saved there,
    keyed by a hash of the items and of the teacher's weights, and reused by the next suite with the
    same key (labelling thousands of triplets costs minutes on a CPU). Items whose teacher distances differ by less
    than ``min_gap`` are kept but flagged in :attr:`ambiguous` (useful for filtering).
    """

    def __init__(self, teacher: torch.nn.Module, n: int = 256, size: int = 64, split: str = "heldout",
                 kinds: Optional[Sequence[str]] = None, seed: int = 0,
                 extra_dirs: Optional[Iterable[PathLike]] = None, strength: Tuple[float, float] = (0.15, 0.85),
                 scale: Tuple[float, float] = (0.2, 0.6), include_gray: bool = False, batch_size: int = 32,
                 device: Optional[Union[str, torch.device]] = None, min_gap: float = 0.0, progress: bool = True,
                 cache_dir: Optional[PathLike] = None):
        super().__init__(n, size, split, kinds, seed, extra_dirs, strength, scale, include_gray)
        self.judge_name = getattr(teacher, "name", "") or type(teacher).__name__
        cached = None
        if cache_dir is not None:
            cache_file = Path(cache_dir).expanduser() / f"teacher-labels-{self._labels_key(teacher)}.pt"
            if cache_file.is_file():
                try:
                    cached = torch.load(cache_file, map_location="cpu", weights_only=True)
                except Exception as err:  # a truncated or foreign file: label again and overwrite it
                    warnings.warn(f"ignoring unreadable teacher-label cache {cache_file} ({err}); recomputing")
        ok = isinstance(cached, dict) and all(isinstance(cached.get(k), torch.Tensor) and cached[k].shape == (self.n,)
                                              for k in ("d0", "d1"))
        if ok:
            self.d0, self.d1 = cached["d0"], cached["d1"]
        else:
            self.d0, self.d1 = self._judge(teacher, batch_size, device, progress)
            if cache_dir is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(".tmp")
                torch.save({"d0": self.d0, "d1": self.d1}, tmp)
                os.replace(tmp, cache_file)
        self.labels = (self.d1 < self.d0).long()
        self.ambiguous = (self.d0 - self.d1).abs() < min_gap

    def _labels_key(self, teacher: torch.nn.Module) -> str:
        """Hash of everything the teacher's distances depend on: the items (photos, kinds, seed, sizes)
        and the teacher itself (its class, name and every parameter and buffer, byte for byte)."""
        h = hashlib.sha256()
        h.update(repr((type(teacher).__qualname__, self.judge_name, self.n, self.size, self.split, self.kinds,
                       self.seed, self.strength, self.scale, sorted(s.path or s.name for s in self.sources))).encode())
        for k, v in teacher.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    def _judge(self, teacher, batch_size, device, progress) -> Tuple[torch.Tensor, torch.Tensor]:
        """The teacher's distances d(ref, x0), d(ref, x1) of every item, in batches."""
        from tqdm.auto import tqdm

        d0s, d1s = [], []
        dev = torch.device(device) if device is not None else next(
            (p.device for p in teacher.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for start in tqdm(range(0, self.n, batch_size), desc=f"teacher {self.judge_name}", disable=not progress or None):
                idx = range(start, min(self.n, start + batch_size))
                ref, x0, x1 = (torch.stack(t).to(dev) for t in zip(*(self.images(i) for i in idx)))
                k = len(idx)
                if getattr(teacher, "has_embedding", False):  # embed each image once (not the reference twice)
                    from ..metrics.embedding import cosine_distance_from_unit

                    e = teacher.embed(torch.cat([ref, x0, x1])).double()
                    d = torch.cat([cosine_distance_from_unit(e[:k], e[k:2 * k]),
                                   cosine_distance_from_unit(e[:k], e[2 * k:])]).float().cpu()
                else:
                    d = teacher(torch.cat([ref, ref]), torch.cat([x0, x1])).float().cpu()
                d0s.append(d[:k])
                d1s.append(d[k:])
        return torch.cat(d0s), torch.cat(d1s)

    def __getitem__(self, i: int):
        ref, x0, x1 = self.images(i)
        lab = int(self.labels[i])
        return ref, x0, x1, lab, float(lab)

    def group(self, i: int) -> str:
        return "teacher"

    def info(self, i: int) -> Dict[str, object]:
        _, src, k0, k1, s0, s1, _, _ = self._params(i)
        return {"photo": src.name, "kind0": k0, "kind1": k1, "s0": s0, "s1": s1,
                "d0": float(self.d0[i]), "d1": float(self.d1[i]), "label": int(self.labels[i]), "judge": self.judge_name}


def ordering_suite(n: int = 256, size: int = 64, split: str = "heldout", seed: int = 0, **kw) -> OrderingSuite:
    """Shortcut for :class:`OrderingSuite`."""
    return OrderingSuite(n=n, size=size, split=split, seed=seed, **kw)


def teacher_suite(teacher: Union[str, torch.nn.Module] = "effnet-lite0-cosine", n: int = 256, size: int = 64,
                  split: str = "heldout", seed: int = 0, device: Optional[Union[str, torch.device]] = None,
                  **kw) -> TeacherSuite:
    """Shortcut for :class:`TeacherSuite`; ``teacher`` may be a hub name (loaded on ``device``)."""
    if isinstance(teacher, str):
        from ..hub import load

        teacher = load(teacher, device=device)
    return TeacherSuite(teacher, n=n, size=size, split=split, seed=seed, device=device, **kw)


class RandomCrops(Dataset):
    """Random square crops of training photos for distillation: several scales, flips, colour jitter.

    Item i is ``crop`` (3×size×size), or ``(plain, jittered)`` when ``jitter_view=True`` -- the two
    views LipSim's distillation matches to the teacher. Deterministic in (seed, i); use a different
    seed per epoch for fresh crops. Defaults to the *train* split: held-out photos never appear.
    """

    def __init__(self, n: int = 10000, size: int = 224, split: str = "train",
                 scales: Sequence[float] = (0.25, 0.5, 0.75, 1.0), flip: bool = True, jitter_view: bool = False,
                 seed: int = 0, extra_dirs: Optional[Iterable[PathLike]] = None, include_gray: bool = True,
                 sources: Optional[Sequence[PhotoSource]] = None):
        if int(n) <= 0:
            raise InputError(f"number of crops must be positive, got {n}")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise InputError(f"crop scales must lie in (0, 1], got {list(scales)}")
        self.sources = list(sources) if sources is not None else select_photos(split, extra_dirs, include_gray)
        if not self.sources:
            raise InputError("no photos to crop from")
        self.n, self.size, self.scales, self.flip = int(n), int(size), tuple(float(s) for s in scales), flip
        self.jitter_view, self.seed = jitter_view, int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = item_rng(self.seed, i, "crops")
        src = self.sources[int(rng.integers(len(self.sources)))]
        s = self.scales[int(rng.integers(len(self.scales)))]
        jitter = 0.9 + 0.1 * rng.uniform()  # +-10 % around the nominal scale
        x = random_crop(src.load(), rng, self.size, (s * jitter, s * jitter))
        if self.flip and rng.uniform() < 0.5:
            x = x.flip(-1)
        if not self.jitter_view:
            return x
        g = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        return x, color_jitter(x[None], g)[0]

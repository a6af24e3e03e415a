"""The judged 2AFC suite: an offline stand-in for BAPPS / NIGHTS, labelled by human-calibrated metrics.

Why: with no human 2AFC data on this machine, the ``ordering`` suite (one distortion at two strengths)
is solved by every metric, a random network included, so it says nothing about perception. Here the
two candidates of a triplet are distortions of *different kinds* at comparable strengths, and the
label is the **unanimous vote of metrics that were fitted to human judgments** (LPIPS-alex/vgg,
ST-LPIPS alex/vgg, DISTS; :data:`DEFAULT_JUDGES`). Triplets without consensus are dropped and counted.
When a judge itself is scored, its own vote is left out (``leave_out``): its label comes from the
others, so it cannot score 100 % by construction. **These labels are judge consensus, not human
judgments**: a metric that shares the judges' blind spots is not penalised for them.

Triplets (:class:`JudgedPool`). The references are square windows of the photos of one split
(``heldout`` for evaluation, ``train`` for training recipes; :func:`~robustsim.data.catalogue.split_of`)
on a fixed grid: sides ``scales`` × the photo's short side, stride half a side, windows flatter than
``MIN_CROP_STD`` dropped. Each window serves ``per_window`` candidates, so the number of candidates
-- and of consensus triplets -- is bounded by the photos; asking for more says what the maximum is.
Candidate c (in a seeded random order of (window, repetition)) gets a pair of kinds from a cycle over
all unordered pairs of ``kinds`` (so every pair is equally frequent), a random order (which kind is x0)
and strengths on a **shared perceptual level**: level t ~ U(0, 1), each candidate at
t ± U(-level_jitter, level_jitter) mapped into its kind's calibrated ``judged`` range
(:data:`robustsim.data.distortions.KINDS`). The ranges were calibrated so that equal levels give
similar judge distances across kinds, so neither candidate is trivially weaker; what decides the vote
is how the kinds are perceived (a 2-px shift against a little blur), which is where pixel metrics and
random networks fail. :meth:`JudgedSuite.balance` reports, per kind pair, how often each kind won.

Cache. Judge distances d(ref, x0), d(ref, x1) of every judge for the labelled prefix of candidates
live in one file under ``<robustsim cache>/judged/`` (or ``cache_dir``), keyed by a hash of the
photos' pixels, the window grid, seed, kinds, their strength ranges, size and the judges' weights
(registered sha256 for hub judges, a hash of the parameters for metric objects). Leave-one-out labels,
larger ``n`` and other views come from the same file; a file that does not load or does not fit is
recomputed. Judges are loaded only when distances are missing.

Training (:func:`judged_triplets`): the same machinery on ``split="train"``, items
``(ref, x0, x1, label, judge)`` with ``judge`` the fraction of judges preferring x1 (BAPPS' soft label)
and ``label`` the consensus (or majority) vote.

Distance correlation (:class:`JudgedPairs`): reference + one distortion; the judges' mean normalised
distance (each judge's distance divided by its median over the suite) is the target of a Spearman
correlation (:func:`robustsim.evaluate.judged.evaluate_pairs`).
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError, WeightsError
from .catalogue import MIN_CROP_STD, PhotoSource, item_rng, crop_resize, select_photos
from .distortions import KINDS, check_kinds, distort
from .suites import TripletDataset

PathLike = Union[str, os.PathLike]

#: The human-calibrated judges (hub names), in vote order.
DEFAULT_JUDGES: Tuple[str, ...] = ("lpips-alex", "lpips-vgg", "stlpips-alex", "stlpips-vgg", "dists")
#: Every kind of the registry: 4 geometric, 4 blur/sharpness, 2 noise, 3 compression, 4 photometric.
JUDGED_KINDS: Tuple[str, ...] = tuple(KINDS)
#: Bump when the candidate construction changes: old caches then miss instead of mislabelling.
SUITE_VERSION = "judged/1"

JudgeLike = Union[str, torch.nn.Module]


# --------------------------------------------------------------------------- judges


def _judge_name(j: JudgeLike) -> str:
    if isinstance(j, str):
        return j
    return getattr(j, "name", "") or type(j).__name__


def _check_judge_names(judges: Sequence[JudgeLike]) -> List[str]:
    """Validate the judge list without loading anything; InputError naming the valid ones."""
    if not judges:
        raise InputError("the judged suite needs at least one judge")
    names = [_judge_name(j) for j in judges]
    if len(set(names)) != len(names):
        raise InputError(f"judge names repeat: {names}")
    from .. import hub

    known = hub.list_models()
    for j in judges:
        if isinstance(j, str) and j not in known:
            raise InputError(f"unknown judge {j!r}; the human-calibrated judges are {', '.join(DEFAULT_JUDGES)} "
                             f"(any hub metric may be named: {', '.join(known)})")
    return names


def _tensor_hash(h, module: torch.nn.Module) -> None:
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        if v.numel():
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def judge_fingerprint(j: JudgeLike) -> str:
    """What a judge's distances depend on, without loading it when it is a hub name.

    Hub names: the builder, its options and every weight file's registered sha256 (a name whose files
    carry no sha256 is loaded and its parameters hashed). Metric objects: class, name and parameters.
    """
    h = hashlib.sha256()
    if isinstance(j, str):
        from .. import hub

        spec = hub.model_spec(j)
        files = sorted((role, wf.filename, wf.sha256) for role, wf in spec.weights.items())
        h.update(repr((j, spec.builder, sorted(spec.kwargs.items()), files)).encode())
        if not files or any(sha is None for _, _, sha in files):
            _tensor_hash(h, load_judge(j))
    else:
        h.update(repr((type(j).__qualname__, _judge_name(j))).encode())
        _tensor_hash(h, j)
    return h.hexdigest()[:16]


def load_judge(name: str, device=None) -> torch.nn.Module:
    """A judge from the hub with its real weights, or a one-line error saying how to get them.

    A judge that silently fell back to random weights would label garbage, so a metric that reports a
    random/uncalibrated provenance is refused too.
    """
    from .. import hub

    try:
        m = hub.load(name, device=device)
    except WeightsError as e:
        first = " ".join(str(e).split())
        raise WeightsError(f"judge {name}: its real weights are missing -- {first}") from None
    except ImportError as e:
        raise InputError(f"judge {name}: cannot be built ({e}); install robustsim's dependencies (pip install -e .)") from None
    prov = " ".join(str(getattr(m, a, "")) for a in ("provenance", "weights_source", "note")).lower()
    if "random" in prov or getattr(m, "pretrained", True) is False:
        raise WeightsError(f"judge {name}: loaded without its real weights ({prov.strip() or 'random weights'}); "
                           f"a judge must be the human-calibrated model (see `robustsim models`)")
    return m.eval()


def _judge_distances(judge: torch.nn.Module, refs: torch.Tensor, others: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """d(ref, x) for each batch in ``others``, in one call (embedding judges embed each image once)."""
    k = refs.shape[0]
    with torch.no_grad():
        if getattr(judge, "has_embedding", False):
            from ..metrics.embedding import cosine_distance_from_unit

            e = judge.embed(torch.cat([refs, *others])).double()
            return [cosine_distance_from_unit(e[:k], e[(i + 1) * k:(i + 2) * k]).double().cpu() for i in range(len(others))]
        d = judge(torch.cat([refs] * len(others)), torch.cat(list(others))).double().cpu()
    return [d[i * k:(i + 1) * k] for i in range(len(others))]


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """A square window of a photo: the reference of a candidate before resizing."""

    photo: int  # index into the pool's sources
    top: int
    left: int
    side: int


@lru_cache(maxsize=256)
def _photo_digest(src: PhotoSource) -> str:
    t = src.load()
    return hashlib.sha256(t.mul(255).round().byte().contiguous().numpy().tobytes()).hexdigest()[:16]


def photo_windows(sources: Sequence[PhotoSource], size: int, scales: Sequence[float]) -> List[Window]:
    """The grid of textured windows of every photo (sides ``scales`` × the short side, stride half a side).

    A window is kept when its pixel std, measured on the photo area-downsampled by side/size (what the
    resized crop would show), is at least ``MIN_CROP_STD``: flat sky or black borders barely change
    under most distortions. Cached per process (suites built from the same photos share it).
    """
    return list(_windows_cached(tuple(sources), int(size), tuple(float(s) for s in scales)))


@lru_cache(maxsize=32)
def _windows_cached(sources: Tuple[PhotoSource, ...], size: int, scales: Tuple[float, ...]) -> Tuple[Window, ...]:
    import torch.nn.functional as F

    out: List[Window] = []
    for p, src in enumerate(sources):
        img = src.load()
        h, w = img.shape[-2:]
        short = min(h, w)
        for sc in scales:
            side = min(short, max(int(round(short * sc)), min(size, short)))
            stride = max(1, side // 2)
            f = max(1.0, side / size)
            small = img if f == 1.0 else F.interpolate(img[None], size=(max(1, round(h / f)), max(1, round(w / f))),
                                                       mode="area")[0]
            k = max(1, round(side / f))
            a = small.double().numpy()
            # integral images of x and x^2 (summed over channels): any box's std in O(1)
            s1 = np.pad(a.sum(0).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            s2 = np.pad((a * a).sum(0).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            tops = np.arange(0, h - side + 1, stride)
            lefts = np.arange(0, w - side + 1, stride)
            ti = np.minimum(np.round(tops / f).astype(int), a.shape[1] - k)
            li = np.minimum(np.round(lefts / f).astype(int), a.shape[2] - k)
            T, L = np.meshgrid(ti, li, indexing="ij")
            box = lambda s: s[T + k, L + k] - s[T, L + k] - s[T + k, L] + s[T, L]
            cnt = 3.0 * k * k
            var = np.maximum(box(s2) / cnt - (box(s1) / cnt) ** 2, 0.0)
            keep = np.sqrt(var) >= MIN_CROP_STD
            for r, top in enumerate(tops):
                for c, left in enumerate(lefts):
                    if keep[r, c]:
                        out.append(Window(p, int(top), int(left), side))
    return tuple(out)


def default_cache_dir() -> Path:
    from ..hub import cache_dir

    return cache_dir() / "judged"


# --------------------------------------------------------------------------- distance cache


class _DistanceStore:
    """Judge distances for a prefix of candidates, on disk: {"names", "d": (J, slots, m) float64}.

    Written atomically; a file that fails to load or has the wrong shape is discarded (recomputed).
    """

    def __init__(self, path: Optional[Path], names: Sequence[str], slots: int):
        self.path, self.names, self.slots = path, list(names), slots
        self.d = torch.zeros(len(names), slots, 0, dtype=torch.float64)
        if path is None or not path.is_file():
            return
        try:
            got = torch.load(path, map_location="cpu", weights_only=True)
            ok = (isinstance(got, dict) and got.get("names") == self.names and isinstance(got.get("d"), torch.Tensor)
                  and got["d"].dim() == 3 and tuple(got["d"].shape[:2]) == (len(names), slots)
                  and bool(torch.isfinite(got["d"]).all()))
        except Exception as err:  # truncated, foreign or corrupt: label again
            warnings.warn(f"ignoring unreadable judge-distance cache {path} ({type(err).__name__}: {err}); recomputing")
            return
        if not ok:
            warnings.warn(f"ignoring judge-distance cache {path}: it does not fit this suite; recomputing")
            return
        self.d = got["d"].double()

    @property
    def m(self) -> int:
        return int(self.d.shape[-1])

    def extend(self, d_new: torch.Tensor) -> None:
        self.d = torch.cat([self.d, d_new.double()], -1)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        torch.save({"names": self.names, "d": self.d}, tmp)
        os.replace(tmp, self.path)


class _Labelled:
    """Shared machinery: photos, windows, a seeded candidate order, judges and the distance cache."""

    _salt = "judged"
    _slots = 2

    def _init_common(self, size, split, kinds, judges, seed, extra_dirs, per_window, scales, include_gray,
                     cache_dir, batch_size, device, progress, min_kinds):
        if int(size) < 16:
            raise InputError(f"image size must be at least 16 px, got {size}")
        if int(per_window) <= 0:
            raise InputError(f"per_window must be positive, got {per_window}")
        if int(batch_size) <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}")
        if not scales or any(not 0 < float(s) <= 1 for s in scales):
            raise InputError(f"window scales must lie in (0, 1], got {list(scales)}")
        self.kinds = check_kinds(kinds if kinds is not None else JUDGED_KINDS)
        if len(self.kinds) < min_kinds:
            raise InputError(f"the judged suite needs at least {min_kinds} distortion kinds, got {self.kinds}")
        self.judges = list(judges)
        self.judge_names = _check_judge_names(self.judges)
        self.size, self.split, self.seed = int(size), split, int(seed)
        self.per_window, self.scales = int(per_window), tuple(float(s) for s in scales)
        self.batch_size, self.device, self.progress = int(batch_size), device, progress
        self.sources = select_photos(split, extra_dirs, include_gray)
        self.windows = photo_windows(self.sources, self.size, self.scales)
        if not self.windows:
            raise InputError(f"no textured {self.size}-px windows in the {split} photos")
        self.n_candidates = len(self.windows) * self.per_window
        order_rng = item_rng(self.seed, 0, f"{self._salt}-order")
        self._order = order_rng.permutation(self.n_candidates)
        key = self._key()
        self.cache_key = key
        base = None if cache_dir is False else (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
        self.cache_path = None if base is None else base / f"{self._salt}-{key}.pt"
        self._store = _DistanceStore(self.cache_path, self.judge_names, self._slots)
        self._loaded: Dict[str, torch.nn.Module] = {}

    def _key_extra(self) -> tuple:
        return ()

    def _key(self) -> str:
        h = hashlib.sha256()
        h.update(repr((SUITE_VERSION, self._salt, self.size, self.split, self.seed, self.per_window, self.scales,
                       [(k, KINDS[k].judged) for k in self.kinds], self._key_extra())).encode())
        for src in self.sources:
            h.update(f"{src.name}:{_photo_digest(src)}".encode())
        h.update(repr([(w.photo, w.top, w.left, w.side) for w in self.windows]).encode())
        for j, name in zip(self.judges, self.judge_names):
            h.update(f"{name}:{judge_fingerprint(j)}".encode())
        return h.hexdigest()[:24]

    # -- candidates
    def _window_of(self, c: int) -> Tuple[Window, int]:
        slot = int(self._order[c])
        return self.windows[slot // self.per_window], slot % self.per_window

    def _reference(self, c: int) -> Tuple[torch.Tensor, PhotoSource]:
        w, _ = self._window_of(c)
        src = self.sources[w.photo]
        return crop_resize(src.load(), w.top, w.left, w.side, self.size), src

    # -- labelling
    def _judge_module(self, i: int) -> torch.nn.Module:
        j, name = self.judges[i], self.judge_names[i]
        if not isinstance(j, str):
            return j.eval()
        if name not in self._loaded:
            self._loaded[name] = load_judge(name, self.device)
        return self._loaded[name]

    def ensure(self, m: int) -> None:
        """Make sure judge distances exist for candidates [0, m) (computing and caching the missing ones)."""
        m = min(int(m), self.n_candidates)
        if self._store.m >= m:
            return
        from tqdm.auto import tqdm

        mods = [self._judge_module(i) for i in range(len(self.judges))]  # every judge loads before any work
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        mods = [mod.to(dev) for mod in mods]
        start = self._store.m
        with tqdm(total=m - start, desc=f"judging {self._salt} ({len(mods)} judges)", unit="item",
                  disable=not self.progress or None) as bar:
            for s in range(start, m, self.batch_size):
                idx = range(s, min(m, s + self.batch_size))
                imgs = [self.images(c) for c in idx]
                ref = torch.stack([t[0] for t in imgs]).to(dev)
                others = [torch.stack([t[k + 1] for t in imgs]).to(dev) for k in range(self._slots)]
                d = torch.stack([torch.stack(_judge_distances(mod, ref, others)) for mod in mods])  # (J, slots, b)
                self._store.extend(d)
                bar.update(len(idx))

    def judge_index(self, names: Optional[Union[str, Sequence[str]]]) -> List[int]:
        """Indices of the named judges (InputError listing the valid ones)."""
        if names is None:
            return []
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            if n not in self.judge_names:
                raise InputError(f"{n!r} is not one of this suite's judges ({', '.join(self.judge_names)})")
        return [self.judge_names.index(n) for n in names]

    def _voters(self, leave_out) -> List[int]:
        out = set(self.judge_index(leave_out))
        voters = [i for i in range(len(self.judge_names)) if i not in out]
        if not voters:
            raise InputError("leave_out removes every judge: nothing left to vote")
        return voters


# --------------------------------------------------------------------------- triplets


class JudgedPool(_Labelled):
    """Candidate triplets of one split with their judges' distances; :meth:`suite` selects views.

    Args:
        size: image side (64 like BAPPS; the metric's native size for attacks).
        split: ``heldout`` (evaluation) or ``train`` (training recipes); never mixed.
        kinds: distortion kinds (default: all 17 of :data:`JUDGED_KINDS`).
        judges: hub names or metric objects (default :data:`DEFAULT_JUDGES`).
        seed: every candidate is a function of (seed, index).
        extra_dirs: more photo folders (also ``$ROBUSTSIM_PHOTOS``).
        per_window: candidates per window (bounds the pool: windows × per_window).
        scales: window sides as fractions of the photo's short side.
        level_jitter: half-width of the independent jitter of each candidate around the shared level.
        include_gray: gray photos (off: saturation and colour shifts mean little on them).
        cache_dir: where the judge distances are cached (default ``<robustsim cache>/judged``; False: none).
    """

    def __init__(self, size: int = 64, split: str = "heldout", kinds: Optional[Sequence[str]] = None,
                 judges: Sequence[JudgeLike] = DEFAULT_JUDGES, seed: int = 0,
                 extra_dirs: Optional[Iterable[PathLike]] = None, per_window: int = 2,
                 scales: Sequence[float] = (0.2, 0.3, 0.45), level_jitter: float = 0.25, include_gray: bool = False,
                 cache_dir: Union[None, bool, PathLike] = None, batch_size: int = 32, device=None, progress: bool = True):
        if not 0 <= float(level_jitter) <= 1:
            raise InputError(f"level_jitter must lie in [0, 1], got {level_jitter}")
        self.level_jitter = float(level_jitter)
        self._init_common(size, split, kinds, judges, seed, extra_dirs, per_window, scales, include_gray,
                          cache_dir, batch_size, device, progress, min_kinds=2)
        self._pairs = list(combinations(range(len(self.kinds)), 2))
        self._cycles: Dict[int, np.ndarray] = {}

    def _key_extra(self) -> tuple:
        return (self.level_jitter,)

    def pair_of(self, c: int) -> Tuple[str, str]:
        """The unordered kind pair of candidate c: a seeded cycle over all pairs (each equally frequent)."""
        q, r = divmod(int(c), len(self._pairs))
        if q not in self._cycles:
            self._cycles[q] = item_rng(self.seed, q, "judged-pairs").permutation(len(self._pairs))
        a, b = self._pairs[int(self._cycles[q][r])]
        return self.kinds[a], self.kinds[b]

    def pair_of_ordered(self, c: int) -> Tuple[str, str]:
        """(kind of x0, kind of x1) of candidate c."""
        ka, kb = self.pair_of(c)
        if item_rng(self.seed, c, "judged").integers(2):
            ka, kb = kb, ka
        return ka, kb

    def params(self, c: int) -> Dict[str, Any]:
        """Everything that defines candidate c (kinds, strengths, realisation seeds), without images."""
        if not 0 <= c < self.n_candidates:
            raise IndexError(c)
        ka, kb = self.pair_of(c)
        rng = item_rng(self.seed, c, "judged")
        if rng.integers(2):
            ka, kb = kb, ka
        t = rng.uniform()
        levels = np.clip(t + rng.uniform(-self.level_jitter, self.level_jitter, size=2), 0.0, 1.0)
        s = [KINDS[k].judged[0] + float(v) * (KINDS[k].judged[1] - KINDS[k].judged[0]) for k, v in zip((ka, kb), levels)]
        seeds = [int(v) for v in rng.integers(2**62, size=2)]
        w, rep = self._window_of(c)
        return {"photo": self.sources[w.photo].name, "window": (w.top, w.left, w.side), "rep": rep,
                "kind0": ka, "kind1": kb, "s0": s[0], "s1": s[1], "seed0": seeds[0], "seed1": seeds[1]}

    def images(self, c: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.params(c)
        ref, _ = self._reference(c)
        return ref, distort(ref, p["kind0"], p["s0"], p["seed0"]), distort(ref, p["kind1"], p["s1"], p["seed1"])

    # -- votes
    def votes(self, m: Optional[int] = None) -> torch.Tensor:
        """(J, m) votes of the labelled prefix: +1 prefers x1 (d1 < d0), -1 prefers x0, 0 tie."""
        d = self._store.d if m is None else self._store.d[..., :m]
        return torch.sign(d[:, 0] - d[:, 1]).long()

    def distances(self) -> torch.Tensor:
        """(J, 2, m) judge distances d(ref, x0), d(ref, x1) of the labelled prefix."""
        return self._store.d

    def select(self, n: int, leave_out=None, consensus_only: bool = True) -> Tuple[List[int], Dict[str, int]]:
        """The first ``n`` candidates whose voters agree (or simply the first ``n``), labelling as needed.

        Returns (candidate indices, counts {"labelled", "dropped", "consensus"}); InputError with the
        maximum this split allows when there are not enough.
        """
        n = int(n)
        if n <= 0:
            raise InputError(f"number of triplets must be positive, got n={n}")
        voters = self._voters(leave_out)
        if n > self.n_candidates:
            raise InputError(self._too_many(n, None))
        if not consensus_only:
            self.ensure(n)
            return list(range(n)), {"labelled": n, "dropped": 0, "consensus": self._consensus(voters, n).count_nonzero().item()}
        m = max(self._store.m, min(self.n_candidates, int(math.ceil(n * 1.6)) + 16))
        while True:
            self.ensure(m)
            ok = self._consensus(voters, self._store.m)
            pos = torch.nonzero(ok).flatten()
            if pos.numel() >= n:
                last = int(pos[n - 1]) + 1
                return [int(i) for i in pos[:n]], {"labelled": last, "dropped": last - n, "consensus": n}
            if self._store.m >= self.n_candidates:
                raise InputError(self._too_many(n, int(pos.numel())))
            rate = max(pos.numel() / max(self._store.m, 1), 0.05)
            m = min(self.n_candidates, self._store.m + int(math.ceil((n - pos.numel()) / rate * 1.15)) + 16)

    def _consensus(self, voters: List[int], m: int) -> torch.Tensor:
        v = self.votes(m)[voters]
        return (v != 0).all(0) & (v == v[:1]).all(0)

    def _too_many(self, n: int, found: Optional[int]) -> str:
        src = f"{len(self.sources)} {self.split} photos, {len(self.windows)} windows × {self.per_window} per window"
        if found is None:
            return (f"n={n} is more than the photos allow: at most {self.n_candidates} candidate triplets ({src}), "
                    f"fewer after dropping those without judge consensus; lower n, raise per_window, or add photos "
                    f"(ROBUSTSIM_PHOTOS / extra_dirs, e.g. scripts/fetch_photos.sh)")
        return (f"n={n} is more than the photos allow: only {found} consensus triplets among all {self.n_candidates} "
                f"candidates ({src}); use n <= {found}, raise per_window, or add photos "
                f"(ROBUSTSIM_PHOTOS / extra_dirs, e.g. scripts/fetch_photos.sh)")

    def suite(self, n: int, leave_out=None, consensus_only: bool = True) -> "JudgedSuite":
        """A dataset view: ``n`` triplets labelled by the judges minus ``leave_out``."""
        return JudgedSuite(self, n, leave_out, consensus_only)

    def suite_for(self, metric_name: str, n: int) -> "JudgedSuite":
        """The view to score ``metric_name`` on: leave-one-out labels when it is one of the judges."""
        return self.suite(n, leave_out=metric_name if metric_name in self.judge_names else None)


class JudgedSuite(TripletDataset):
    """``n`` judged triplets: items ``(ref, x0, x1, label, judge)``.

    ``label`` is the consensus vote (0: x0 is closer) -- the majority when ``consensus_only=False``
    (ties count as x1 = 0.5 soft); ``judge`` the fraction of voting judges preferring x1 (the soft
    label, 0 or 1 on consensus triplets). ``voters`` are the judges that voted (all but ``leave_out``).
    """

    def __init__(self, pool: JudgedPool, n: int, leave_out=None, consensus_only: bool = True):
        self.pool = pool
        self.voters = [pool.judge_names[i] for i in pool._voters(leave_out)]
        self.leave_out = [pool.judge_names[i] for i in pool.judge_index(leave_out)]
        self.consensus_only = consensus_only
        self.indices, self.counts = pool.select(n, leave_out, consensus_only)
        v = pool.votes()[[pool.judge_names.index(x) for x in self.voters]][:, self.indices].double()
        self.soft = ((v > 0).double().sum(0) + 0.5 * (v == 0).double().sum(0)) / v.shape[0]
        self.labels = (self.soft > 0.5).long()
        self.size, self.kinds = pool.size, pool.kinds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self.indices):
            raise IndexError(i)
        ref, x0, x1 = self.pool.images(self.indices[i])
        return ref, x0, x1, int(self.labels[i]), float(self.soft[i])

    def group(self, i: int) -> str:
        """The unordered kind pair ``"a|b"`` (sorted): per-kind scores are folded from these groups."""
        return "|".join(sorted(self.kind_pair(i)))

    def kind_pair(self, i: int) -> Tuple[str, str]:
        """(kind of x0, kind of x1) of item i."""
        return self.pool.pair_of_ordered(self.indices[i])

    def pair_counts(self, limit: Optional[int] = None) -> Dict[str, int]:
        """Number of items per unordered kind pair (among the first ``limit``)."""
        out: Dict[str, int] = {}
        for i in range(len(self) if limit is None else min(len(self), int(limit))):
            g = self.group(i)
            out[g] = out.get(g, 0) + 1
        return out

    def info(self, i: int) -> Dict[str, object]:
        c = self.indices[i]
        p = self.pool.params(c)
        d = self.pool.distances()[:, :, c]
        p.update({"candidate": c, "label": int(self.labels[i]), "judge": float(self.soft[i]), "voters": list(self.voters),
                  "d0": {n: float(d[k, 0]) for k, n in enumerate(self.pool.judge_names)},
                  "d1": {n: float(d[k, 1]) for k, n in enumerate(self.pool.judge_names)}})
        return p

    def judge_distances(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """A judge's cached (d0, d1) on this view's items (no recomputation)."""
        k = self.pool.judge_index(name)[0]
        d = self.pool.distances()[k][:, self.indices]
        return d[0], d[1]

    def balance(self) -> Dict[str, Any]:
        """How often each kind of a pair was judged the closer one (0.5: balanced; 0 or 1: trivial).

        Returns per pair {n, first_wins (fraction where the alphabetically first kind won)}, per kind the
        fraction of its triplets it won, and summaries: mean |p - 0.5| over pairs, the fraction of pairs
        (with >= 4 triplets) whose win rate lies in [0.2, 0.8], and the most one-sided pairs.
        """
        pairs: Dict[Tuple[str, str], List[int]] = {}
        kind_wins: Dict[str, List[int]] = {k: [] for k in self.kinds}
        for i in range(len(self)):
            k0, k1 = self.kind_pair(i)
            winner = k1 if int(self.labels[i]) == 1 else k0
            a, b = sorted((k0, k1))
            pairs.setdefault((a, b), []).append(int(winner == a))
            kind_wins[k0].append(int(winner == k0))
            kind_wins[k1].append(int(winner == k1))
        per_pair = {f"{a}|{b}": {"n": len(v), "first_wins": float(np.mean(v))} for (a, b), v in sorted(pairs.items())}
        big = {k: v for k, v in per_pair.items() if v["n"] >= 4}
        skew = sorted(big.items(), key=lambda kv: -abs(kv[1]["first_wins"] - 0.5))
        return {
            "pairs": per_pair,
            "kinds": {k: {"n": len(v), "wins": float(np.mean(v)) if v else float("nan")} for k, v in kind_wins.items()},
            "pairs_seen": len(per_pair), "pairs_total": len(self.kinds) * (len(self.kinds) - 1) // 2,
            "mean_abs_skew": float(np.mean([abs(v["first_wins"] - 0.5) for v in per_pair.values()])) if per_pair else 0.0,
            "balanced_fraction": float(np.mean([0.2 <= v["first_wins"] <= 0.8 for v in big.values()])) if big else float("nan"),
            "one_sided": [f"{k} ({v['n']}: {100 * v['first_wins']:.0f}% first)" for k, v in skew[:8]],
        }


def judged_suite(n: int = 500, size: int = 64, split: str = "heldout", seed: int = 0, leave_out=None,
                 consensus_only: bool = True, **pool_kw) -> JudgedSuite:
    """Shortcut: build a :class:`JudgedPool` and take an ``n``-triplet view of it."""
    return JudgedPool(size=size, split=split, seed=seed, **pool_kw).suite(n, leave_out, consensus_only)


def judged_triplets(n: int, split: str = "train", size: int = 64, seed: int = 0,
                    judges: Sequence[JudgeLike] = DEFAULT_JUDGES, consensus_only: bool = True,
                    per_window: Optional[int] = None, extra_dirs: Optional[Iterable[PathLike]] = None,
                    cache_dir: Union[None, bool, PathLike] = None, device=None, batch_size: int = 32,
                    progress: bool = True, leave_out=None, **pool_kw) -> JudgedSuite:
    """Judge-labelled triplets for training (R-LPIPS heads, fine-tuning a certified model).

    Items ``(ref, x0, x1, label, judge)``: images 3×size×size in [0, 1]; ``label`` the hard consensus
    (0: x0 closer), ``judge`` the soft label = fraction of judges preferring x1. ``split="train"`` never
    touches a held-out photo. ``per_window`` (default: the smallest of 2, 4, 8, 16, 32, 64 giving at
    least 2.5 n candidates) bounds how many triplets share a reference window; a different ``seed``
    gives different triplets. Labels are cached, so a second call with the same arguments is instant.
    ``leave_out`` (judge names) votes no label: e.g. ``leave_out="lpips-alex"`` labels R-LPIPS' training
    data by the other four judges while reusing the five-judge cache (the labels equal those of
    ``judges=`` the other four: candidates do not depend on the judges).
    """
    if per_window is None:
        probe = JudgedPool(size=size, split=split, seed=seed, judges=judges, extra_dirs=extra_dirs, per_window=1,
                           cache_dir=False, progress=progress, **pool_kw)
        per_window = next((p for p in (2, 4, 8, 16, 32, 64) if len(probe.windows) * p >= 2.5 * int(n)), 64)
    pool = JudgedPool(size=size, split=split, seed=seed, judges=judges, extra_dirs=extra_dirs, per_window=per_window,
                      cache_dir=cache_dir, device=device, batch_size=batch_size, progress=progress, **pool_kw)
    return pool.suite(n, leave_out=leave_out, consensus_only=consensus_only)


# --------------------------------------------------------------------------- pairs (distance correlation)


class JudgedPairs(_Labelled, Dataset):
    """Reference + one distortion, kinds cycled (n/k each), strength uniform in the kind's judged range.

    Items ``(ref, x)``; :meth:`target` is the judges' mean normalised distance (each judge divided by its
    median over the first ``n`` pairs, then averaged over the voters), the quantity a metric's distances
    are rank-correlated with.
    """

    _salt = "judged-pairs"
    _slots = 1

    def __init__(self, n: int = 340, size: int = 64, split: str = "heldout", kinds: Optional[Sequence[str]] = None,
                 judges: Sequence[JudgeLike] = DEFAULT_JUDGES, seed: int = 0,
                 extra_dirs: Optional[Iterable[PathLike]] = None, per_window: int = 1,
                 scales: Sequence[float] = (0.2, 0.3, 0.45), include_gray: bool = False,
                 cache_dir: Union[None, bool, PathLike] = None, batch_size: int = 32, device=None, progress: bool = True):
        self._init_common(size, split, kinds, judges, seed, extra_dirs, per_window, scales, include_gray,
                          cache_dir, batch_size, device, progress, min_kinds=1)
        if int(n) <= 0:
            raise InputError(f"number of pairs must be positive, got n={n}")
        if int(n) > self.n_candidates:
            raise InputError(f"n={n} is more than the photos allow: at most {self.n_candidates} pairs "
                             f"({len(self.windows)} windows × {self.per_window}); lower n or add photos")
        self.n = int(n)
        self.ensure(self.n)

    def __len__(self) -> int:
        return self.n

    def params(self, c: int) -> Dict[str, Any]:
        if not 0 <= c < self.n_candidates:
            raise IndexError(c)
        kind = self.kinds[c % len(self.kinds)]
        rng = item_rng(self.seed, c, self._salt)
        lo, hi = KINDS[kind].judged
        w, _ = self._window_of(c)
        return {"photo": self.sources[w.photo].name, "kind": kind, "s": float(lo + rng.uniform() * (hi - lo)),
                "seed": int(rng.integers(2**62))}

    def images(self, c: int) -> Tuple[torch.Tensor, torch.Tensor]:
        p = self.params(c)
        ref, _ = self._reference(c)
        return ref, distort(ref, p["kind"], p["s"], p["seed"])

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.images(i)

    def group(self, i: int) -> str:
        return self.kinds[i % len(self.kinds)]

    def target(self, leave_out=None) -> torch.Tensor:
        """(n,) mean over the voting judges of distance / that judge's median distance."""
        d = self._store.d[self._voters(leave_out), 0, :self.n]
        med = d.median(dim=1, keepdim=True).values.clamp_min(1e-12)
        return (d / med).mean(0)

    def judge_distances(self, name: str) -> torch.Tensor:
        return self._store.d[self.judge_index(name)[0], 0, :self.n]

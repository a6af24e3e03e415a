"""Judged 2AFC evaluation (the perceptual headline) and the judged distance-correlation suite.

Why a module of its own: scoring against judge consensus needs three things the generic 2AFC loop
does not know about -- leave-one-out labels when the scored metric is itself a judge, scores per
distortion *kind* (each triplet has two kinds), and images shown at the metric's native size while
the labels stay those the judges gave at the suite's size. It reuses :func:`.twoafc.evaluate_2afc`
(natural, attacked with any threat model, certified; resumable per batch) for everything else.

Native size: the judged triplets are rendered at the pool's size (64 px by default, like BAPPS) and
judged there; a metric with another native size (EfficientNet 224, LipSim-CPU 128) gets the *same*
images upsampled (bicubic, clamped) to its size, so its labels are exactly the judges', and attack
budgets are in [0, 1] pixel units at that native size (the convention of the whole library).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data.suites import TripletDataset
from ..errors import InputError
from .twoafc import PAPER_CERT_EPS, AttackSpec, budget_key, evaluate_2afc

PathLike = Union[str, os.PathLike]


def native_size(metric, default: int) -> int:
    """The metric's native side, or ``default`` for size-agnostic metrics (LPIPS, pixel-l2)."""
    s = getattr(metric, "input_size", None)
    return int(s[0]) if s else int(default)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    mode = dict(mode="bicubic", align_corners=False) if size > x.shape[-1] else dict(mode="area")
    return F.interpolate(x[None], size=(size, size), **mode)[0].clamp(0, 1)


class Resized(TripletDataset):
    """A triplet dataset shown at another size (labels and metadata unchanged)."""

    def __init__(self, base, size: int):
        self.base, self.size = base, int(size)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        ref, x0, x1, lab, j = self.base[i]
        return _resize(ref, self.size), _resize(x0, self.size), _resize(x1, self.size), lab, j

    def group(self, i: int) -> str:
        return self.base.group(i)

    def info(self, i: int):
        return self.base.info(i)


def kinds_from_pairs(pair_means: Dict[str, float], pair_counts: Dict[str, int]) -> Dict[str, float]:
    """Per-kind means from per-pair means: a kind's score is over every triplet that involves it."""
    num: Dict[str, float] = {}
    den: Dict[str, int] = {}
    for key, mean in pair_means.items():
        c = pair_counts.get(key, 0)
        for k in key.split("|"):
            num[k] = num.get(k, 0.0) + mean * c
            den[k] = den.get(k, 0) + c
    return {k: num[k] / den[k] for k in num if den[k]}


def _fold_groups(section: Dict[str, Any], counts: Dict[str, int]) -> None:
    """Replace a result section's per-pair groups (up to 136) by per-kind scores (17), keeping the pairs."""
    pairs = section.pop("groups", {}) or {}
    section["pairs"] = pairs
    section["kinds"] = kinds_from_pairs(pairs, counts)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"spearman needs two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def judged_tensors(pool, name: str, n: int, size: int) -> Dict[str, torch.Tensor]:
    """The first ``n`` triplets of ``pool``'s suite for the metric ``name`` (leave-one-out labels when it is a
    judge) shown at ``size`` px, stacked for scripts that work on whole tensors: ``ref``, ``x0``, ``x1``
    (N×3×size×size), ``label`` (long, 1 when the judges find x1 the closer) and ``judge`` (float64 fraction)."""
    suite = pool.suite_for(name, n)
    ds = Resized(suite, size) if size != pool.size else suite
    items = [ds[i] for i in range(len(ds))]
    out = {key: torch.stack([it[j] for it in items]) for j, key in enumerate(("ref", "x0", "x1"))}
    out["label"] = torch.stack([torch.as_tensor(it[3]) for it in items]).long()
    out["judge"] = torch.tensor([float(it[4]) for it in items], dtype=torch.float64)
    return out


def evaluate_judged(metric, pool, n: int, name: Optional[str] = None, attacks: Sequence[AttackSpec] = (),
                    n_attack: Optional[int] = None, certified: Optional[bool] = None,
                    cert_eps: Sequence[float] = PAPER_CERT_EPS, batch_size: int = 32, device=None, run_dir=None,
                    progress: bool = True, size: Optional[int] = None) -> Dict[str, Any]:
    """Score ``metric`` on ``n`` judged triplets of ``pool`` (leave-one-out labels when it is a judge).

    Args:
        name: the metric's name for the leave-one-out rule (default ``metric.name``).
        attacks: threat models (each evaluated at all its budgets) on the first ``n_attack`` triplets.
        certified: certified 2AFC too (default: when the metric is certified).
        size: side the metric sees (default: its native size, else the pool's).

    Returns the :func:`evaluate_2afc` result plus ``kinds`` (natural score per kind), ``attacks`` (a list
    of {"threat", "n", "natural_on_subset", "eps": {ε: score}}), ``leave_out``, ``voters``, ``counts``.
    """
    name = name or getattr(metric, "name", "") or type(metric).__name__
    suite = pool.suite_for(name, n)
    side = int(size) if size else native_size(metric, pool.size)
    ds = Resized(suite, side) if side != pool.size else suite
    cert = bool(getattr(metric, "certified", False)) if certified is None else bool(certified)
    cfg = {"suite": f"judged key={pool.cache_key} n={n} leave_out={suite.leave_out}", "size": side}
    sub = (lambda s: None) if run_dir is None else (lambda s: os.path.join(run_dir, s))
    t0 = time.perf_counter()
    res = evaluate_2afc(metric, ds, batch_size, device, certified=cert, cert_eps=cert_eps, run_dir=sub("natural"),
                        progress=progress, config=cfg)
    counts = suite.pair_counts()
    _fold_groups(res["natural"], counts)
    res["kinds"] = res["natural"]["kinds"]
    for sec in (res.get("certified") or {}).get("at", {}).values():
        _fold_groups(sec, counts)
    res["attacks"] = []
    for spec in attacks:
        k = min(len(suite), int(n_attack or len(suite)))
        tag = f"attack_{spec.method}_{spec.norm}_{spec.target.replace('+', '_')}"
        att = evaluate_2afc(metric, ds, batch_size, device, attack=spec, limit=k, run_dir=sub(tag), progress=progress,
                            config=cfg)
        sub_counts = suite.pair_counts(k)
        res["attacks"].append({"threat": asdict(spec), "n": att["n"], "natural_on_subset": att["natural"]["overall"],
                               "eps": {e: v["overall"] for e, v in att["attacked"]["eps"].items()},
                               "kinds": {e: kinds_from_pairs(v.get("groups", {}), sub_counts)
                                         for e, v in att["attacked"]["eps"].items()}})
    res.update({"metric": name, "size": side, "leave_out": suite.leave_out, "voters": suite.voters,
                "counts": suite.counts, "seconds": round(time.perf_counter() - t0, 1)})
    return res


def evaluate_pairs(metric, pairs, name: Optional[str] = None, batch_size: int = 32, device=None,
                   progress: bool = True) -> Dict[str, Any]:
    """Spearman correlation of the metric's d(ref, x) with the judges' mean normalised distance,
    overall and per kind (the metric's own vote is left out of the target when it is a judge)."""
    from tqdm.auto import tqdm

    name = name or getattr(metric, "name", "") or type(metric).__name__
    leave = name if name in pairs.judge_names else None
    target = pairs.target(leave_out=leave)
    side = native_size(metric, pairs.size)
    dev = torch.device(device) if device is not None else next((p.device for p in metric.parameters()), torch.device("cpu"))
    ds: List[torch.Tensor] = []
    with torch.no_grad():
        for s in tqdm(range(0, len(pairs), batch_size), desc=f"pairs {name}", disable=not progress or None):
            b = [pairs[i] for i in range(s, min(len(pairs), s + batch_size))]
            ref = torch.stack([_resize(t[0], side) for t in b]).to(dev)
            x = torch.stack([_resize(t[1], side) for t in b]).to(dev)
            ds.append(metric(ref, x).double().cpu())
    d = torch.cat(ds)
    kinds = [pairs.group(i) for i in range(len(pairs))]
    out = {"metric": name, "n": len(pairs), "overall": spearman(d.numpy(), target.numpy()), "kinds": {},
           "leave_out": [leave] if leave else []}
    for k in pairs.kinds:
        m = np.array([g == k for g in kinds])
        if m.sum() >= 3:
            out["kinds"][k] = spearman(d.numpy()[m], target.numpy()[m])
    return out


def fmt_eps(e: float, norm: str) -> str:
    """Budget label: l-inf budgets as k/255 when they are multiples of 1/255 (:func:`.twoafc.budget_key`)."""
    return budget_key(e) if norm == "linf" else f"{e:g}"

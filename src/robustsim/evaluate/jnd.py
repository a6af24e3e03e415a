"""JND evaluation (BAPPS): average precision of the distance ranking against the "same" judgments.

Pairs are ranked by increasing distance (small distance = predicted "same"); with ``same`` the fraction
of people who saw no difference (soft labels allowed), precision/recall are accumulated over the
ranking. Tied distances form one threshold (nothing depends on the order of ties).

``interpolated=True`` (default) is the reference LPIPS score: the area under the precision envelope
(VOC AP, ``lpips.voc_ap``). ``interpolated=False`` is the step-wise sum Σ (R_k - R_{k-1}) P_k, which
equals ``sklearn.metrics.average_precision_score(same, -d)`` for 0/1 labels.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..errors import InputError
from .runner import BatchStore, metric_fingerprint, run_batches


def jnd_map(d, same, interpolated: bool = True) -> float:
    """Average precision of ranking pairs by distance (ascending) against ``same`` in [0, 1]."""
    d = np.asarray(torch.as_tensor(d, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    s = np.asarray(torch.as_tensor(same, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if d.shape != s.shape or d.size == 0:
        raise InputError(f"distances and 'same' must be non-empty and of equal length, got {d.size} and {s.size}")
    if not np.isfinite(d).all():
        raise InputError("distances contain NaN or Inf")
    if (s < 0).any() or (s > 1).any():
        raise InputError("'same' values must lie in [0, 1]")
    if s.sum() <= 0:
        raise InputError("no pair was judged 'same': average precision is undefined")
    order = np.argsort(d, kind="stable")
    d, s = d[order], s[order]
    tp, fp = np.cumsum(s), np.cumsum(1 - s)
    last = np.r_[d[1:] != d[:-1], True]  # end of each run of tied distances
    tp, fp = tp[last], fp[last]
    prec = tp / np.maximum(tp + fp, 1e-300)
    rec = tp / s.sum()
    if not interpolated:
        return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))
    mrec = np.r_[0.0, rec, 1.0]
    mpre = np.r_[0.0, prec, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_jnd(metric, dataset, batch_size: int = 32, device: Optional[Union[str, torch.device]] = None,
                 run_dir=None, limit: Optional[int] = None, on_corrupt: str = "skip", progress: bool = True,
                 config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """JND mAP of ``metric`` on a dataset of ``(p0, p1, same)``, overall and per category."""
    dev = torch.device(device) if device is not None else next(
        (p.device for p in metric.parameters()), torch.device("cpu"))
    metric = metric.to(dev).eval()
    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    if n <= 0:
        raise InputError("empty selection: the dataset has no pairs (or --limit 0)")
    name = getattr(metric, "name", "") or type(metric).__name__
    store = BatchStore(run_dir, {"protocol": "jnd", "metric": name, "n": n, "batch_size": int(batch_size),
                                "weights": metric_fingerprint(metric) if run_dir is not None else None, **(config or {})})

    def fn(batch):
        with torch.no_grad():
            return {"d": metric(batch[0].to(dev), batch[1].to(dev)).double(), "same": batch[2].double()}

    res = run_batches("jnd", store, dataset, fn, batch_size, range(n), on_corrupt, progress, desc=f"JND {name}")
    groups = [dataset.group(int(i)) if hasattr(dataset, "group") else "all" for i in res["index"]]
    out: Dict[str, Any] = {"metric": name, "n": int(res["index"].numel()), "skipped": len(res["skipped"]),
                           "skipped_items": [f"{i}: {m}" for i, m in res["skipped"][:20]],
                           "jnd_map": {"overall": jnd_map(res["d"], res["same"]), "groups": {}}}
    names = sorted(set(groups), key=groups.index)
    if len(names) > 1:
        for g in names:
            m = torch.tensor([x == g for x in groups])
            out["jnd_map"]["groups"][g] = jnd_map(res["d"][m], res["same"][m])
    return out

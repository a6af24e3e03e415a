"""Embedding-attack evaluation (LipSim Eq. 14): how far can an l2 perturbation move d(x, x + δ)?

For each budget ε, :func:`robustsim.attacks.embedding_attack` maximises ||f(x+δ) - f(x)||² and we record
d(x, x+δ); the report shows the histogram and its mean / median / 95th percentile (the paper: DreamSim's
mean moves 0 -> 0.6 at ε = 1, LipSim stays near 0).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..errors import InputError
from .runner import BatchStore, metric_fingerprint, run_batches


class _FirstImage:
    """View of a triplet dataset that yields only its reference images."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return (item[0],) if isinstance(item, tuple) else (item,)


def evaluate_embedding_attack(metric, dataset, eps: Sequence[float] = (0.5, 1.0, 2.0, 3.0), steps: int = 100,
                              batch_size: int = 32, device: Optional[Union[str, torch.device]] = None, run_dir=None,
                              limit: Optional[int] = None, on_corrupt: str = "skip", progress: bool = True,
                              seed: int = 0, bins: int = 20, config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Distances d(x, x+δ) after the embedding attack at each ε; histogram and summary statistics.

    ``dataset`` yields images, or triplets (their references are used).
    """
    from .. import attacks

    eps = [float(e) for e in eps]
    if not eps or any(e <= 0 for e in eps):
        raise InputError(f"embedding attack budgets must be positive, got {eps}")
    dev = torch.device(device) if device is not None else next((p.device for p in metric.parameters()), torch.device("cpu"))
    metric = metric.to(dev).eval()
    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    if n <= 0:
        raise InputError("empty selection: no images for the embedding attack")
    name = getattr(metric, "name", "") or type(metric).__name__
    store = BatchStore(run_dir, {"protocol": "embedding", "metric": name, "n": n, "eps": eps, "steps": int(steps),
                                 "batch_size": int(batch_size), "seed": int(seed),
                                 "weights": metric_fingerprint(metric) if run_dir is not None else None, **(config or {})})
    images = _FirstImage(dataset)
    out: Dict[str, Any] = {"metric": name, "steps": int(steps), "eps": {}}
    for e in eps:
        def fn(batch, e=e):
            _, d = attacks.embedding_attack(metric, batch[0].to(dev), eps=e, norm="l2", steps=steps, seed=seed)
            return {"d": d.detach().double()}

        res = run_batches(f"embedding_{e:g}", store, images, fn, batch_size, range(n), on_corrupt, progress,
                          desc=f"embedding attack eps={e:g}")
        d = res["d"]
        hist = torch.histogram(d.float().cpu(), bins=bins, range=(0.0, max(1.0, float(d.max()))))
        out["eps"][f"{e:g}"] = {"mean": float(d.mean()), "median": float(d.median()),
                                "p95": float(torch.quantile(d, 0.95)), "max": float(d.max()), "n": int(d.numel()),
                                "distances": [float(v) for v in d],
                                "hist_counts": [int(c) for c in hist.hist], "hist_edges": [float(v) for v in hist.bin_edges]}
    return out

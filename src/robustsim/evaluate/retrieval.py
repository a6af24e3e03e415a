"""Top-1 retrieval evaluation (LipSim §5.3): clean, under an l2 attack on the query, and certified.

Each query should retrieve its ``target`` among the gallery by smallest distance (largest cosine).
The attacked queries come from :func:`robustsim.attacks.embedding_attack` (l2 PGD pushing the query's
embedding away from where it was, ε = 2 in the paper); for certified metrics the top-1 radius of
:func:`robustsim.certify.top1` gives the certified top-1 accuracy at the requested budgets. Needs a
metric with an embedding. (The index/search tool is elsewhere; this only measures.)
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..errors import InputError


def _top1(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # smallest ||q - g||² for unit vectors = largest cosine; computed as a difference-free argmax of <q, g>
    return (q.double() @ g.double().T).argmax(dim=1)


def evaluate_retrieval(metric, queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor,
                       eps: float = 2.0, steps: int = 100, batch_size: int = 32,
                       cert_eps: Sequence[float] = (36 / 255, 72 / 255, 108 / 255),
                       device: Optional[Union[str, torch.device]] = None, seed: int = 0,
                       progress: bool = True) -> Dict[str, Any]:
    """Top-1 accuracy clean / attacked (and certified for certified metrics) of queries against a gallery."""
    from tqdm.auto import tqdm

    name = getattr(metric, "name", "") or type(metric).__name__
    if not getattr(metric, "has_embedding", False):
        raise InputError(f"{name} has no embedding: retrieval needs a cosine/embedding metric (not LPIPS)")
    targets = torch.as_tensor(targets, dtype=torch.long)
    if queries.shape[0] == 0 or gallery.shape[0] == 0:
        raise InputError("empty selection: retrieval needs at least one query and one gallery image")
    if targets.shape != (queries.shape[0],):
        raise InputError(f"targets must have one entry per query ({queries.shape[0]}), got shape {tuple(targets.shape)}")
    if int(targets.min()) < 0 or int(targets.max()) >= gallery.shape[0]:
        raise InputError(f"targets must index the gallery (0..{gallery.shape[0] - 1})")
    dev = torch.device(device) if device is not None else next((p.device for p in metric.parameters()), torch.device("cpu"))
    metric = metric.to(dev).eval()
    from .. import attacks

    with torch.no_grad():
        gal = torch.cat([metric.embed(gallery[s:s + batch_size].to(dev)) for s in range(0, gallery.shape[0], batch_size)])
    clean, adv, radii = [], [], []
    for s in tqdm(range(0, queries.shape[0], batch_size), desc=f"retrieval {name}", disable=not progress or None):
        q = queries[s:s + batch_size].to(dev)
        with torch.no_grad():
            clean.append(_top1(metric.embed(q), gal).cpu())
        q_adv, _ = attacks.embedding_attack(metric, q, eps=eps, norm="l2", steps=steps, seed=seed)
        with torch.no_grad():
            adv.append(_top1(metric.embed(q_adv), gal).cpu())
        if getattr(metric, "certified", False):
            from .. import certify

            c = certify.top1(metric, q, gal)
            radii.append(torch.where(c.index.cpu() == targets[s:s + batch_size], c.radius.cpu().double(),
                                     torch.zeros(q.shape[0], dtype=torch.float64)))
    clean_t, adv_t = torch.cat(clean), torch.cat(adv)
    out: Dict[str, Any] = {"metric": name, "n_queries": int(queries.shape[0]), "n_gallery": int(gallery.shape[0]),
                           "eps": float(eps), "steps": int(steps),
                           "top1_clean": float((clean_t == targets).double().mean()),
                           "top1_attacked": float((adv_t == targets).double().mean())}
    if radii:
        r = torch.cat(radii)
        out["top1_certified"] = {f"{e * 255:.0f}/255": float((r > e).double().mean()) for e in cert_eps}
    return out

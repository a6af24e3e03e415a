r"""Top-k search in an :class:`~robustsim.retrieval.index.Index`, with certificates for certified metrics.

Distances are ``d = 1 - cos = ||u - v||²/2`` computed in float64 from the difference (FAISS's float32
inner products only *propose* candidates; the returned order is by the exact distance).

Certificates (query perturbed, l2, the query's own pixel units: K = metric.lipschitz · ||R|| of the
resize from the query's size, :func:`robustsim.certify.top1_radius`):

- **top-1**: the radius within which no perturbation of the query changes its nearest stored item;
- **near-duplicate at τ**: for each returned neighbour, the decision ``d <= τ`` and the radius within
  which it cannot flip (the threshold certificate of DESIGN §3.5, from the stored embedding).

Approximate indexes (IVF, HNSW) may miss the true top-1, and a certificate about a wrong top-1 is
worthless, so the certificate is always computed about the **true** top-1 with exact scores. Only
items that could compete need exact scores: a competitor b with margin ``m_b = <u, a - b>`` has
``sin ψ_b >= m_b/2 - 2κ/m_b`` (κ the storage error chord; see ``top1_radius``), so once one
competitor c bounds the answer by ``s = min(1, m_c/||a - c||) >= sin ψ_c``, every b with
``m_b >= s + sqrt(s² + 4κ)`` cannot lower the radius (nor be the top-1). For IVF we find *all* such b
soundly from the coarse lists: every b in list l satisfies ``<u, b> <= <u, c_l> + r_l`` (c_l the
centroid, r_l the largest distance of a member to it, Cauchy-Schwarz with ||u|| = 1), so only lists
whose bound reaches ``<u, a> - t`` are scanned (repeated if a better top-1 turns up; once 80% of the
gallery qualifies, all of it is scored in one exact pass, which is cheaper than gathering the rows).
HNSW has no such bound, so its certificates scan every stored vector (exact scores, chunked).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch

from .. import certify
from ..certify import geometry
from ..errors import InputError
from ..images import check_images, load_image
from .fast_top1 import certified_top1
from .index import Index

_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)


@dataclass
class Neighbour:
    """One stored item returned for a query."""

    index: int
    path: str
    distance: float
    duplicate: Optional[bool] = None  # d <= tau (when tau was given)
    duplicate_radius: Optional[float] = None  # certified l2 radius of that decision (certified metrics)


@dataclass
class QueryResult:
    """Neighbours of one query (closest first) and, for certified metrics, the top-1 certificate."""

    query: str
    neighbours: List[Neighbour] = field(default_factory=list)
    top1_radius: Optional[float] = None
    top1_margin: Optional[float] = None
    gnorm: Optional[float] = None
    candidates_checked: Optional[int] = None  # stored items scored exactly for the certificate

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["neighbours"] = [dict(n.__dict__) for n in self.neighbours]
        return d


def _gallery_error(dim: int) -> float:
    """Chord by which a stored float32 unit vector may differ from the exact one (top1_radius's default)."""
    return 64.0 * math.sqrt(dim) * _EPS32


def _exact_scores(u: np.ndarray, emb: np.ndarray, rows: Optional[np.ndarray] = None, chunk: int = 65536) -> np.ndarray:
    if rows is None:
        return np.concatenate([emb[j:j + chunk].astype(np.float64) @ u for j in range(0, len(emb), chunk)])
    return emb[rows].astype(np.float64) @ u


def _ivf_candidates(ix: Index, lists, u: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Every stored row that could be the true top-1 or lower its radius (module docstring)."""
    cent, assign, rad = lists
    ub_list = cent @ u + rad
    kappa = 2 * _gallery_error(ix.dim)
    slack = 64 * ix.dim * _EPS64 + 1e-12
    cand = np.unique(start)
    while True:
        s = _exact_scores(u, ix.embeddings, cand)
        order = np.argsort(-s, kind="stable")
        a = cand[order[0]]
        ub = 1.0
        if len(cand) > 1:  # sin ψ_b <= cos β_b = m_b/||a - b|| for every known competitor b: take the smallest
            others = cand[order[1:]]
            m = np.maximum(s[order[0]] - s[order[1:]], 0.0)
            C = np.linalg.norm(ix.embeddings[others].astype(np.float64) - ix.embeddings[a].astype(np.float64), axis=1)
            ok = C > 0
            if ok.any():
                ub = min(1.0, float((m[ok] / C[ok]).min()) + slack)
        t = ub + math.sqrt(ub * ub + 4 * kappa) + slack
        need = np.nonzero(ub_list >= s[order[0]] - t - slack)[0]
        rows = np.nonzero(np.isin(assign, need))[0]
        new = np.union1d(cand, rows)
        if len(new) == len(cand):
            return cand
        if 5 * len(new) >= 4 * len(ix.embeddings):  # pruning no longer pays: score everything (a sound superset)
            return np.arange(len(ix.embeddings))
        cand = new


def _threshold_radius(bq: "geometry.BoundedFeatures", v: torch.Tensor, Gv: torch.Tensor, tau: float, dim: int):
    """Decisions ``d(q, b) <= tau`` and their certified radii, query perturbed, b stored (unit v, norm Gv).

    The threshold certificate of :func:`robustsim.certify.threshold`, fed with stored embeddings instead
    of images. A stored vector is what the decision uses (distances are computed from it exactly in
    float64), so it carries no float allowance beyond our own float64 arithmetic.
    """
    stored = geometry.BoundedFeatures(v * Gv[:, None], 16.0 * dim * _EPS64 * Gv, 1.0, 1.0, torch.float32, "stored")
    decision, radius, _ = geometry.threshold_radius(bq.expand(v.shape[0]), stored, tau, "x")
    return decision, radius


def _load_query(q: Union[str, torch.Tensor], min_size: int):
    if isinstance(q, torch.Tensor):
        x = check_images(q if q.dim() == 4 else q[None], "query", min_size=min_size)
        if x.shape[0] != 1:
            raise InputError("pass query tensors one image at a time (1×3×H×W), or a list of them")
        return "<tensor>", x
    return str(q), load_image(q, min_size=max(2, min_size))


def search(ix: Index, metric: Any, queries: Sequence[Union[str, torch.Tensor]], k: int = 5,
           tau: Optional[float] = None, certify_top1: bool = True, progress: bool = False) -> List[QueryResult]:
    """Top-k stored neighbours of each query (files or 1×3×H×W tensors) with exact distances.

    For certified metrics (``certify_top1``) each result carries the certified l2 radius of its top-1
    answer, computed about the true top-1 even for approximate indexes (module docstring). With ``tau``
    each neighbour carries the near-duplicate decision ``d <= tau`` and, for certified metrics, its
    certified radius. The metric must be the one the index was built with (name and weights hash).
    """
    from tqdm.auto import tqdm

    ix.check_metric(metric)
    if len(ix) == 0:
        raise InputError("the index is empty: add images first")
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if tau is not None and not (0 <= float(tau) <= 2):
        raise InputError(f"tau must lie in [0, 2] (d = 1 - cos), got {tau}")
    if isinstance(queries, (str, torch.Tensor)):
        queries = [queries]
    if not len(queries):
        raise InputError("no queries given")
    k = min(int(k), len(ix))
    certified = bool(getattr(metric, "certified", False)) and ix.certified
    dev = next((p.device for p in metric.parameters()), torch.device("cpu"))
    fi = ix.faiss_index
    lists = ix.ivf_lists() if (certified and certify_top1 and ix.kind == "ivf") else None
    emb32 = emb_t = torch.from_numpy(ix.embeddings)
    if certified and certify_top1 and ix.kind == "ivf" and emb_t.numel() <= 2 ** 27:  # up-cast once for IVF subsets
        emb_t = emb_t.double()
    if certified and certify_top1:  # top1_radius's contract (unit rows), checked once rather than per query
        geometry.check_unit_rows(emb_t)
    out = []
    for q in tqdm(queries, desc="search", disable=not progress or None):
        name, x = _load_query(q, int(getattr(metric, "min_size", 1)))
        with torch.no_grad():
            # ranking and distances: the metric's own features, normalised in float64 (as the index stores them)
            feats = metric.raw_features if hasattr(metric, "raw_features") else metric.embed
            u = feats(x.to(dev)).double().cpu()[0].numpy()
            u = u / max(np.linalg.norm(u), 1e-300)
            if certified:  # certificates: features with a proven float allowance (float64 recomputation)
                bq = certify.bounded_features(metric, x.to(dev), "query")
                G = float(bq.G[0])
        if u.shape[0] != ix.dim:
            raise InputError(f"embedding dimension mismatch: the index stores {ix.dim}-d vectors, the metric gives {u.shape[0]}")
        ks = min(len(ix), 2 * k + 10)
        _, ids = fi.search(u[None].astype(np.float32), ks)
        cand = ids[0][ids[0] >= 0]
        res = QueryResult(query=name)
        if certified and certify_top1:
            if ix.kind == "ivf":
                rows = _ivf_candidates(ix, lists, bq.u[0].numpy(), cand)  # about the certified top-1
                if len(rows) == len(ix):  # every row is a candidate: score the gallery as it is
                    rows, gal = None, emb_t
                else:
                    gal = emb_t[torch.from_numpy(rows)]
            else:
                rows, gal = None, emb_t
            if rows is None:  # one float32 pass, exact scores only for the rows that can matter (fast_top1)
                c = certified_top1(bq, emb32, gallery_error=_gallery_error(ix.dim), unit_checked=True)
            else:
                c = certify.top1_radius(bq, gal, gallery_error=_gallery_error(ix.dim), unit_checked=True)
            top = int(c.index[0]) if rows is None else int(rows[int(c.index[0])])
            res.top1_radius, res.top1_margin, res.gnorm = float(c.radius[0]), float(c.margin[0]), G
            res.candidates_checked = len(ix) if rows is None else len(rows)
            cand = np.union1d(cand, [top])
        # exact distances (from differences) of the candidates, closest first (ties: lower row first)
        e = ix.embeddings[cand].astype(np.float64)
        d = ((e - u[None]) ** 2).sum(1) / 2
        order = np.lexsort((cand, d))[:k]
        sel, dist = cand[order], d[order]
        res.neighbours = [Neighbour(int(i), ix.paths[int(i)], float(di)) for i, di in zip(sel, dist)]
        if tau is not None:
            if certified:
                v = torch.from_numpy(ix.embeddings[sel].astype(np.float64))
                v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
                Gv = torch.from_numpy(np.nan_to_num(ix.gnorms[sel], nan=1.0))
                dec, rad = _threshold_radius(bq, v, Gv, float(tau), ix.dim)
                for n_, dd, rr in zip(res.neighbours, dec.tolist(), rad.tolist()):
                    n_.duplicate, n_.duplicate_radius = bool(dd), float(rr)
            else:
                for n_ in res.neighbours:
                    n_.duplicate = n_.distance <= float(tau)
        out.append(res)
    return out


__all__ = ["search", "QueryResult", "Neighbour"]

r"""Batched certified top-1 over a stored gallery at the cost of one float32 search pass.

Why: :func:`robustsim.certify.geometry.top1_radius` scores every stored vector in float64, one query
at a time (a matrix-vector product plus an up-cast of the gallery per query), which made certified
search ~200× slower than plain exact FAISS search. The certificate only needs exact numbers for the
few stored items that could be the top-1 or lower its radius; everything else can be *excluded* with
float32 scores from one matrix-matrix product (the same work as plain exact search), provided the
float32 error is bounded, not estimated.

Bound. For a unit query u (rounded to float32: ``||u32 - u|| <= u_32``, the unit roundoff 2^-24) and
a stored row e (``||e|| <= 1 + tol``), the float32 dot product computed in *any* summation order,
with or without FMA, satisfies ``|fl(<u32, e>) - <u32, e>| <= γ_D ||u32|| ||e||`` with
``γ_D = D·u_32/(1 - D·u_32)`` (Higham, Accuracy and Stability, §3.1; Cauchy-Schwarz). So every
float32 score is within ``e_s = γ_D (1 + u_32)(1 + tol) + u_32 (1 + tol)`` (+ the float64 rounding
of the exact pass, D·eps64 with margin) of the float64 score the exact certificate uses.

Exclusion. Let ``t(s) = cmax/2 · (s + sqrt(s² + 8κ/cmax))`` (cmax = 2(1 + tol), κ = 2·gallery_error):
a competitor b whose float64 margin m_b against the top-1 a satisfies ``m_b >= t(best) + slack`` has
cap sine ``>= m_b/cmax - 2κ/m_b >= best`` (the lemma :func:`top1_radius` prunes with), so it can
neither be the top-1 nor lower the radius. Per query we therefore

1. take the float32 scores S of the whole gallery (one GEMM per batch of queries) and its two best rows;
2. keep the rows with ``S >= S_max - T``, T from an *estimate* of best (the float64 cap bound of the
   runner-up) plus 2·e_s: this set holds the true top-1 (its float32 score is within 2·e_s of S_max);
3. run the exact certificate (:func:`~robustsim.certify.geometry.top1_radius`) on those rows only;
4. **verify** with the best it found (``sin ψ <= displacement(radius)/G``, the inverse of the radius
   formula, an upper bound when the radius is clipped at 0) that every excluded row has float32 margin
   ``>= t(best) + 2·e_s + slack``; when not (the estimate was too optimistic), enlarge the set to what
   the verified threshold requires and repeat; after a few rounds score the whole gallery exactly.

So the result is exactly what the full-gallery certificate would return (same top-1, same radius),
only without scoring in float64 the rows that provably do not matter. If float32 matrix products
may run in reduced precision (``torch.get_float32_matmul_precision() != "highest"``: TF32 / bf16
kernels), the scores are taken in float64 instead: slower, still sound.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ..certify import geometry
from ..errors import InputError

_F64 = torch.float64
_EPS64 = float(torch.finfo(_F64).eps)


def _reduced_precision_matmul() -> bool:
    if torch.get_float32_matmul_precision() != "highest":
        return True
    mk = getattr(getattr(getattr(torch.backends, "mkldnn", None), "matmul", None), "fp32_precision", None)
    return mk not in (None, "ieee", "none", "highest")


def score_error(dim: int, dtype: torch.dtype, tol: float) -> float:
    """Bound on |score in ``dtype`` (GEMM) - score in float64| for a unit query and rows of norm <= 1 + tol."""
    u = float(torch.finfo(dtype).eps) / 2
    if dim * u >= 0.5:
        raise InputError(f"dimension {dim} too large for a {dtype} error bound")
    gamma = dim * u / (1 - dim * u)
    return 2.0 * (gamma * (1 + u) * (1 + tol) + u * (1 + tol) + 64 * dim * _EPS64)


def _t_vec(best: torch.Tensor, cmax: float, kappa: float) -> torch.Tensor:
    best = best.to(_F64).clamp_min(0)
    return cmax / 2 * (best + torch.sqrt(best * best + 8 * kappa / cmax))


def _subset_certificates(q: geometry.BoundedFeatures, qi: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor,
                         gal: torch.Tensor, kappa: float):
    """The exact certificate of queries ``qi`` over their kept rows ``cols`` (padded; ``valid`` marks real ones).

    Same computation as :func:`~robustsim.certify.geometry.top1_radius` restricted to those rows (float64
    scores, top-1 = first maximum, cap sine of every other kept row via
    :func:`~robustsim.certify.geometry.hemisphere_sine`, radius from the smallest sine via
    :meth:`BoundedFeatures.eps_for_angle`), vectorised over the queries.
    Returns (top-1 row, radius, margin of the closest competitor, best sine).
    """
    B, L = cols.shape
    ar = torch.arange(B)
    rows = gal[cols].to(_F64)  # (B, L, D)
    u = q.u[qi]
    sc = torch.einsum("bld,bd->bl", rows, u).masked_fill(~valid, -math.inf)
    a_loc = sc.argmax(dim=1)
    a_rows = rows[ar, a_loc]
    sine, M, _ = geometry.hemisphere_sine(u[:, None, :].expand(-1, L, -1), a_rows[:, None, :].expand(-1, L, -1), rows,
                                          torch.full((B, L), kappa, dtype=_F64))
    other = valid.clone()
    other[ar, a_loc] = False
    best = sine.masked_fill(~other, math.inf).min(dim=1).values
    first = (sc[ar, a_loc][:, None] - sc).masked_fill(~other, math.inf).argmin(dim=1)
    margin = M[ar, first]
    sel = q.select(qi)
    radius = torch.where((sel.G > 0) & (best > 0), sel.eps_for_angle(torch.asin(best.clamp(0, 1))), torch.zeros_like(best))
    return cols[ar, a_loc], radius, margin, best


def _grow(exact, Sj, keepj, i, q, m, cmax, kappa, es, slack):
    """One query whose kept rows were too few: enlarge to what the verified threshold requires, re-verify."""
    rows = torch.nonzero(keepj).flatten()
    for _ in range(4):
        full = rows.numel() == m
        a, r, mg = exact(i, None if full else rows)
        if full:
            return a, r, mg
        disp = float(q.eval_lipschitz[i]) * r + float(q.err[i])  # sin ψ = displacement(radius)/G inverts the radius
        best_ub = disp / max(float(q.G[i]), 1e-300) * (1 + 1e-9) + 1e-15
        need = float(Sj[a]) - float(_t_vec(torch.tensor(best_ub), cmax, kappa)) - 2 * es - slack
        outside = Sj.clone()
        outside[rows] = -math.inf
        if float(q.G[i]) > 0 and float(outside.max()) < need:
            return a, r, mg
        rows = torch.unique(torch.cat([rows, torch.nonzero(Sj >= need).flatten()]))
        if 5 * rows.numel() >= 4 * m:
            rows = torch.arange(m)
    return exact(i, None)


def certified_top1(
    queries: Union[geometry.BoundedFeatures, torch.Tensor],
    gallery: torch.Tensor,
    lipschitz: float = 1.0,
    rel_error: Optional[float] = None,
    gallery_error: Optional[float] = None,
    unit_tol: float = geometry.UNIT_TOL,
    unit_checked: bool = False,
    batch_size: int = 128,
    max_subset: int = 512,
    group: int = 16,
) -> geometry.Top1Certificate:
    """Top-1 stored row and its certified radius for every query, equal to
    :func:`robustsim.certify.geometry.top1_radius` on the whole gallery, at about the cost of one float32
    exact search (module docstring). Same arguments as that function; ``gallery`` (M, D) unit rows,
    float32 (the stored index) or float64.
    """
    if gallery.dim() != 2 or gallery.shape[0] < 1:
        raise InputError(f"certified_top1 needs a non-empty gallery (M, D), got shape {tuple(gallery.shape)}")
    if isinstance(queries, geometry.BoundedFeatures):
        q = queries
    else:
        if not isinstance(queries, torch.Tensor) or queries.dim() != 2:
            raise InputError("certified_top1 needs query features (N, D) or BoundedFeatures")
        K = float(lipschitz)
        if not (K > 0 and math.isfinite(K)):
            raise InputError(f"lipschitz must be positive and finite, got {lipschitz}")
        rel = geometry.REL_FACTOR * float(torch.finfo(queries.dtype).eps) if rel_error is None else float(rel_error)
        q = geometry.BoundedFeatures.declared(queries, K, rel)
    m, dim = gallery.shape
    if q.dim != dim:
        raise InputError(f"query features have {q.dim} dimensions, the gallery {dim}")
    gal = gallery.detach().cpu()
    if gal.dtype not in (torch.float32, _F64):
        gal = gal.to(_F64)
    if not unit_checked:
        geometry.check_unit_rows(gal, unit_tol)
    n = len(q)
    kg = 64.0 * math.sqrt(dim) * float(torch.finfo(gal.dtype).eps) if gallery_error is None else float(gallery_error)
    kappa = 2 * kg
    cmax = 2 * (1 + unit_tol)
    slack = 64 * dim * _EPS64 + 1e-12
    gemm_dtype = _F64 if (gal.dtype == _F64 or _reduced_precision_matmul()) else torch.float32
    gal_g = gal if gal.dtype == gemm_dtype else gal.to(gemm_dtype)
    es = score_error(dim, gemm_dtype, unit_tol)

    index = torch.empty(n, dtype=torch.long)
    radius = torch.zeros(n, dtype=_F64)
    margins = torch.zeros(n, dtype=_F64)

    def exact(i: int, rows: Optional[torch.Tensor]):
        sub = gal if rows is None else gal[rows]
        c = geometry.top1_radius(q.select(slice(i, i + 1)), sub, gallery_error=kg, unit_tol=unit_tol, unit_checked=True)
        a = int(c.index[0]) if rows is None else int(rows[int(c.index[0])])
        return a, float(c.radius[0]), float(c.margin[0])

    for s0 in range(0, n, batch_size):
        s1 = min(n, s0 + batch_size)
        B = s1 - s0
        U = q.u[s0:s1].to(gemm_dtype)
        S = U @ gal_g.T  # (B, M): the one pass over the gallery
        if m == 1:
            for i in range(s0, s1):
                index[i], radius[i], margins[i] = exact(i, None)
            continue
        top2v, top2i = torch.topk(S, 2, dim=1)
        # estimate best from the runner-up (float64, exact rows): it only sets the first threshold
        ua = q.u[s0:s1]
        diff = gal[top2i[:, 0]].to(_F64) - gal[top2i[:, 1]].to(_F64)
        est = ((ua * diff).sum(1) / diff.norm(dim=1).clamp_min(1e-300)).clamp(0, 1)
        T = _t_vec(est, cmax, kappa) + 2 * es + slack
        thr = top2v[:, 0] - T.to(S.dtype)
        keep = S >= thr[:, None]
        keep[torch.arange(B), top2i[:, 1]] = True  # at least two rows, so every subset has a runner-up
        rr, cc = torch.nonzero(keep, as_tuple=True)  # kept (query, row) pairs, rows ascending per query
        counts = torch.bincount(rr, minlength=B)
        small_all = torch.nonzero(counts <= max_subset).flatten()
        rest = set(range(B)) - set(small_all.tolist())
        if small_all.numel():
            offsets = torch.cumsum(counts, 0) - counts
            pos = torch.arange(rr.numel()) - offsets[rr]
            fits = counts[rr] <= max_subset
            pad_all = torch.full((B, int(counts[small_all].max())), -1, dtype=torch.long)
            pad_all[rr[fits], pos[fits]] = cc[fits]
            # groups of queries with similar subset sizes: padding to a group's largest stays cheap
            by_size = small_all[torch.argsort(counts[small_all], stable=True)]
            for g0 in range(0, by_size.numel(), group):
                small = by_size[g0:g0 + group]
                pad = pad_all[small, :int(counts[small].max())]
                valid = pad >= 0
                cols = torch.where(valid, pad, pad[:, :1])
                a_idx, r_b, m_b, best_b = _subset_certificates(q, small + s0, cols, valid, gal, kappa)
                # verification: every excluded row must score below what the certificate found requires
                need = (S[small, a_idx].to(_F64)
                        - _t_vec(best_b * (1 + 1e-9) + 1e-15, cmax, kappa) - 2 * es - slack)
                excluded = thr[small].to(_F64)  # every row left out scored below the batch threshold
                ok = (excluded < need) & (q.G[small + s0] > 0)
                done = small[ok] + s0
                index[done], radius[done], margins[done] = a_idx[ok], r_b[ok], m_b[ok]
                rest |= set(small[~ok].tolist())
        for j in sorted(rest):  # large kept sets, or a first estimate that was too optimistic: one by one
            index[s0 + j], radius[s0 + j], margins[s0 + j] = _grow(exact, S[j], keep[j], s0 + j, q, m, cmax, kappa, es, slack)
    return geometry.Top1Certificate(index=index, radius=radius, margin=margins, gnorm=q.G.clone(), normalized=False)


__all__ = ["certified_top1", "score_error"]

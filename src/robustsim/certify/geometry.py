r"""Certificate geometry in feature space: public functions on embeddings, no network involved.

Everything here takes raw feature vectors g (whose direction is the embedding f = g/||g|| and whose
norm G = ||g|| sets the scale), the Lipschitz constant K of the map from the caller's pixels to g,
and the *float allowance* of each vector: a radius ``err`` in feature space around the computed g
within which every floating-point evaluation of the unperturbed image lies (ours and an attacker's),
and the constant ``Kf >= K`` by which a perturbation of size ε can move an evaluated g (the exact
K·ε plus the growth of the attacker's rounding error with the perturbation). :class:`BoundedFeatures`
carries the four; :mod:`robustsim.certify.rounding` proves them for LipSim networks, and
:meth:`BoundedFeatures.exact` / :meth:`BoundedFeatures.declared` build them from numbers a caller
vouches for. Retrieval and the certified fine-tuning loss use these functions directly.

The one fact (exact cap lemma). If an evaluated g' lies within δ of g and δ < G, the angle between
g' and g is at most ``asin(δ/G)`` (tangent cone of the ball); for δ >= G the ball contains the origin
and the direction can be anything (angle π). With ``δ(ε) = Kf·ε + err`` this bounds how far the
embedding of a perturbed image can turn; an unperturbed image turns by at most ``asin(err/G)``. This
is exact for the worst 1-Lipschitz g (a linear g reaches every point of the ball).

- 2AFC, reference perturbed: the decision is the sign of ``<w, c - o>`` over the cap around f(ref);
  the minimum over a cap of half-angle φ is ``C cos(β + φ)`` (cos β = M/C, M = <f(ref), c - o>,
  C = ||c - o||), so with κ the chord by which c and o may be off, the decision holds while
  ``sin φ < sin(acos(κ/C) - β)``: in exact arithmetic (κ = err = 0, Kf = K) ``ε* = G·M/(K·C)``.
- 2AFC, x0/x1/both perturbed: angles α = 2 asin(||u - v||/2) obey the spherical triangle inequality,
  so the decision holds while the cap angles of the moved images stay below α_o - α_c.
- Distance interval: ``θ ∈ [θ0 - φ_x - φ_y, θ0 + φ_x + φ_y] ∩ [0, π]``, d = 2 sin²(θ/2).
- Threshold "d <= τ" / "d > τ": the largest ε whose interval stays on one side (bisection).
- Top-1 (query perturbed, gallery stored): every competitor b must keep ``<w, a - b> > 0``, the 2AFC
  geometry with c = a, o = b; only b with small margin can attain the minimum (see :func:`top1_radius`).

Float hygiene: nothing subtracts nearly equal cosines. Distances are ``||u - v||²/2``, margins
``<u, c - o>`` with the difference formed first, angles ``2 asin(||u - v||/2)``, all in float64 on the
exactly up-cast features; returned distance bounds are widened by the rounding of the caller's own
``||u - v||²/2`` sum in the features' dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from ..errors import InputError

__all__ = [
    "BoundedFeatures",
    "Top1Certificate",
    "angle",
    "cap_angle",
    "chord",
    "cosine_distance",
    "distance_of_angle",
    "widen_distance",
    "largest_true",
    "hemisphere_sine",
    "two_afc_bounds",
    "interval_angles",
    "distance_interval",
    "threshold_radius",
    "top1_radius",
    "check_unit_rows",
    "REL_FACTOR",
    "UNIT_TOL",
]

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)
#: legacy calibrated allowance (relative feature error per unit roundoff) for raw features whose
#: producer states nothing; only :func:`top1_radius` on a plain tensor without ``rel_error`` uses it.
REL_FACTOR = 2.0 ** 8
#: how far from 1 the norm of a stored gallery row may be before :func:`top1_radius` refuses it.
UNIT_TOL = 1e-3


def _unit_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float32).eps)


def _as_col(v: Union[float, torch.Tensor], n: int) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=F64).detach().cpu().flatten()
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise InputError(f"expected a number or {n} values, got {t.numel()}")
    return t.clone()


# ----------------------------------------------------------------------------------------------
@dataclass
class BoundedFeatures:
    """Raw features of N images with their float allowance (module docstring).

    g: (N, D) float64 features as computed; err: (N,) radius around g containing every float evaluation of
    the unperturbed image; lipschitz: (N,) K, caller's pixels -> features, exact arithmetic;
    eval_lipschitz: (N,) Kf >= K, growth of an evaluated g per unit of perturbation; dtype: the dtype the
    features were computed in (for the widening of distances); method: how err was obtained.
    """

    g: torch.Tensor
    err: torch.Tensor
    lipschitz: torch.Tensor
    eval_lipschitz: torch.Tensor
    dtype: torch.dtype = torch.float32
    method: str = "exact"

    def __post_init__(self) -> None:
        if self.g.dim() != 2:
            raise InputError(f"features must be (N, D), got shape {tuple(self.g.shape)}")
        self.g = self.g.detach().to(F64).cpu()
        if not torch.isfinite(self.g).all():
            raise InputError("features contain NaN or Inf")
        n = self.g.shape[0]
        self.err = _as_col(self.err, n)
        self.lipschitz = _as_col(self.lipschitz, n)
        self.eval_lipschitz = torch.maximum(_as_col(self.eval_lipschitz, n), self.lipschitz)
        if bool((self.err < 0).any()) or not bool(torch.isfinite(self.err).all()):
            raise InputError("float allowance err must be finite and >= 0")
        if not bool(((self.lipschitz > 0) & torch.isfinite(self.eval_lipschitz)).all()):
            raise InputError("lipschitz constants must be positive and finite")
        self.G = self.g.norm(dim=1)
        self.u = self.g / self.G.clamp_min(1e-300)[:, None]
        self.u[self.G == 0] = 0.0

    @classmethod
    def exact(cls, g: torch.Tensor, lipschitz: Union[float, torch.Tensor] = 1.0) -> "BoundedFeatures":
        """Features taken as exact (no float allowance): certificates about exact arithmetic."""
        return cls(g, 0.0, lipschitz, lipschitz, g.dtype, "exact")

    @classmethod
    def declared(cls, g: torch.Tensor, lipschitz: Union[float, torch.Tensor], rel: float) -> "BoundedFeatures":
        """A caller-declared relative feature error r (``||g̃ - g|| <= r·||g̃||``, for us and for an attacker):
        err = 3·r·G (2r + r², rounded up), Kf = K·(1 + r). Sound only if the declaration is."""
        r = float(rel)
        if not (r >= 0 and math.isfinite(r)):
            raise InputError(f"relative float error must be a finite number >= 0, got {rel}")
        g64 = g.detach().to(F64)
        r = max(r, 16.0 * g64.shape[1] * EPS64)  # our own float64 scalar arithmetic
        K = _as_col(lipschitz, g64.shape[0])
        return cls(g64, 3 * r * g64.norm(dim=1), K, K * (1 + r), g.dtype, "declared")

    @property
    def dim(self) -> int:
        return self.g.shape[1]

    def __len__(self) -> int:
        return self.g.shape[0]

    def select(self, idx) -> "BoundedFeatures":
        """The rows ``idx`` (a slice or index tensor)."""
        out = BoundedFeatures.__new__(BoundedFeatures)
        out.g, out.err, out.lipschitz, out.eval_lipschitz, out.G, out.u = (
            t[idx] for t in (self.g, self.err, self.lipschitz, self.eval_lipschitz, self.G, self.u))
        out.dtype, out.method = self.dtype, self.method
        return out

    def expand(self, n: int) -> "BoundedFeatures":
        """Broadcast a batch of one to n (any other size must already be n)."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise InputError(f"batch sizes differ: {len(self)} vs {n} (only 1-vs-N broadcasting is allowed)")
        out = BoundedFeatures.__new__(BoundedFeatures)
        out.g, out.err, out.lipschitz, out.eval_lipschitz = (t.expand(n, *t.shape[1:]) for t in
                                                              (self.g, self.err, self.lipschitz, self.eval_lipschitz))
        out.G, out.u = self.G.expand(n), self.u.expand(n, -1)
        out.dtype, out.method = self.dtype, self.method
        return out

    def displacement(self, eps: Union[float, torch.Tensor]) -> torch.Tensor:
        """Radius around g containing every evaluated g(x + δ), ||δ|| <= eps."""
        return self.eval_lipschitz * eps + self.err

    def cap(self, eps: Union[float, torch.Tensor, None]) -> torch.Tensor:
        """Largest angle by which the embedding of the image (perturbed by eps, or not: None) can turn."""
        return cap_angle(self.err if eps is None else self.displacement(eps), self.G)

    def eps_for_angle(self, budget: torch.Tensor) -> torch.Tensor:
        """Largest eps whose cap angle stays below ``budget`` (closed-form inverse of :meth:`cap`)."""
        dmax = torch.where(budget >= math.pi / 2, self.G, self.G * torch.sin(budget.clamp(0, math.pi / 2)))
        eps = (dmax - self.err) / self.eval_lipschitz
        return torch.where(budget > 0, eps.clamp_min(0), torch.zeros_like(eps))

    def eps_limit(self) -> torch.Tensor:
        """The eps at which the displacement ball reaches the origin (nothing is certified beyond)."""
        return ((self.G - self.err) / self.eval_lipschitz).clamp_min(0)


# ----------------------------------------------------------------------------------------------
def angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle between unit vectors from their difference (accurate for near-duplicates)."""
    return 2 * torch.asin(((u - v).norm(dim=-1) / 2).clamp(0, 1))


def cap_angle(delta: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Largest angle between g (norm G) and a point within delta of it: asin(delta/G), or π once delta >= G."""
    delta = torch.as_tensor(delta, dtype=F64)
    ratio = delta / G.clamp_min(1e-300)
    return torch.where(ratio < 1, torch.asin(ratio.clamp(0, 1)), torch.full_like(ratio, math.pi))


def chord(phi: torch.Tensor) -> torch.Tensor:
    """Chord length 2 sin(φ/2) of an angle between unit vectors."""
    return 2 * torch.sin(phi.clamp(0, math.pi) / 2)


def cosine_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """1 - <u, v> of unit vectors as ||u - v||²/2 (no cancellation)."""
    return (u - v).pow(2).sum(-1) / 2


def distance_of_angle(a: torch.Tensor) -> torch.Tensor:
    """d = 1 - cos θ = 2 sin²(θ/2)."""
    return 2 * torch.sin(a / 2).pow(2)


def widen_distance(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype, dim: int):
    """Widen [lo, hi] by the relative rounding of a caller's ||u - v||²/2 sum of length dim in ``dtype``."""
    w = (dim + 4) * _unit_eps(dtype)
    return (lo * (1 - w)).clamp(0, 2), (hi * (1 + w) + 1e-300).clamp(0, 2)


def largest_true(pred: Callable[[torch.Tensor], torch.Tensor], hi: torch.Tensor, iters: int = 80) -> torch.Tensor:
    """Largest ε in [0, hi] with pred(ε) True, by bisection (pred monotone: True below, False above).

    Returns the lower end of the bracket, so pred holds there (0 when pred(0) is already False).
    """
    lo = torch.zeros_like(hi)
    ok0 = pred(lo)
    ok_hi = pred(hi)
    top = hi.clone()
    for _ in range(iters):
        mid = (lo + top) / 2
        ok = pred(mid)
        lo = torch.where(ok, mid, lo)
        top = torch.where(ok, top, mid)
    out = torch.where(ok_hi, hi, lo)
    return torch.where(ok0, out, torch.zeros_like(out))


def _sin_psi(cos_beta: torch.Tensor, sin_beta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """sin(acos(k) - β): the cap half-angle that keeps <w, c - o> > κ (k = κ/C)."""
    k = k.clamp(0, 1)
    return torch.sqrt((1 - k) * (1 + k)) * cos_beta - k * sin_beta


def hemisphere_sine(u: torch.Tensor, c: torch.Tensor, o: torch.Tensor, kappa: torch.Tensor):
    """Cap sine bound for ``<w, c' - o'> > 0`` with w near u and c'/o' within chord κ of c/o.

    Returns (sin ψ clipped at 0, M, C): the decision survives every cap of half-angle φ with sin φ < sin ψ.
    c and o need not be unit vectors (an inner-product ranking); u must be.
    """
    diff = c - o
    C = diff.norm(dim=-1)
    M = (u * diff).sum(-1)
    n = diff / C.clamp_min(1e-300).unsqueeze(-1)
    cos_b = (M / C.clamp_min(1e-300)).clamp(-1, 1)
    sin_b = (u - cos_b.unsqueeze(-1) * n).norm(dim=-1).clamp(0, 1)  # orthogonal part, no cancellation
    k = kappa / C.clamp_min(1e-300)
    s = _sin_psi(cos_b, sin_b, k)
    ok = (C > 0) & (M > 0) & (k < 1) & (s > 0)
    return torch.where(ok, s, torch.zeros_like(s)), M, C


# ----------------------------------------------------------------------------------------------
def _same_batch(*fs: BoundedFeatures) -> list:
    n = max(len(f) for f in fs)
    out = [f.expand(n) for f in fs]
    if len({f.dim for f in out}) != 1:
        raise InputError(f"features of different sizes: {[f.dim for f in out]}")
    return out


def two_afc_bounds(ref: BoundedFeatures, x0: BoundedFeatures, x1: BoundedFeatures, perturbed: str = "ref") -> dict:
    """2AFC decision and certified radius from bounded features (module docstring).

    Returns a dict of (N,) tensors: closer (0/1, ties -> 0 with radius 0), radius (caller's pixel units),
    paper_radius (LipSim's M/(K·C), NaN unless perturbed == "ref"), margin, d0, d1, gnorm, lipschitz.
    """
    if perturbed not in ("ref", "x0", "x1", "both"):
        raise InputError(f"perturbed must be 'ref', 'x0', 'x1' or 'both', got {perturbed!r}")
    er, e0, e1 = _same_batch(ref, x0, x1)
    d0 = cosine_distance(er.u, e0.u)
    d1 = cosine_distance(er.u, e1.u)
    closer = (d1 < d0).long()
    one = closer.bool()
    c = torch.where(one[:, None], e1.u, e0.u)
    o = torch.where(one[:, None], e0.u, e1.u)
    ec_err, eo_err = torch.where(one, e1.err, e0.err), torch.where(one, e0.err, e1.err)
    Gc, Go = torch.where(one, e1.G, e0.G), torch.where(one, e0.G, e1.G)
    zero_g = (er.G == 0) | (e0.G == 0) | (e1.G == 0)

    if perturbed == "ref":
        kappa = chord(cap_angle(ec_err, Gc)) + chord(cap_angle(eo_err, Go))
        s, M, C = hemisphere_sine(er.u, c, o, kappa)
        radius = ((er.G * s - er.err) / er.eval_lipschitz).clamp_min(0)
        paper = torch.where(C > 0, M / (C.clamp_min(1e-300) * er.lipschitz), torch.zeros_like(M)).clamp_min(0)
        K = er.lipschitz.clone()
    else:
        gap = angle(er.u, o) - angle(er.u, c) - 2 * er.cap(None)
        if perturbed == "both":
            budget = gap
            hi = torch.minimum(e0.eps_limit(), e1.eps_limit())
            radius = largest_true(lambda eps: e0.cap(eps) + e1.cap(eps) < budget, hi)
            K = torch.maximum(e0.lipschitz, e1.lipschitz)
        else:
            ep, other = (e0, e1) if perturbed == "x0" else (e1, e0)
            budget = gap - other.cap(None)
            radius = ep.eps_for_angle(budget)
            K = ep.lipschitz.clone()
        radius = torch.where(budget > 0, radius, torch.zeros_like(radius))
        paper = torch.full_like(radius, float("nan"))
    radius = torch.where(zero_g | (d0 == d1), torch.zeros_like(radius), radius)
    margin = torch.where(one, d0 - d1, d1 - d0)
    return {"closer": closer, "radius": radius, "paper_radius": paper, "margin": margin, "d0": d0, "d1": d1,
            "gnorm": er.G.clone(), "lipschitz": K}


def interval_angles(x: BoundedFeatures, y: BoundedFeatures, eps, perturbed: str = "x"):
    """Bounds on the angle between the embeddings of x + δ and y (+ δ' for "both"), ||δ||, ||δ'|| <= eps."""
    if perturbed not in ("x", "both"):
        raise InputError(f"perturbed must be 'x' or 'both', got {perturbed!r}")
    theta = angle(x.u, y.u)
    spread = x.cap(eps) + y.cap(eps if perturbed == "both" else None)
    lo = (theta - spread).clamp(0, math.pi)
    hi = (theta + spread).clamp(0, math.pi)
    bad = (x.G == 0) | (y.G == 0)
    return torch.where(bad, torch.zeros_like(lo), lo), torch.where(bad, torch.full_like(hi, math.pi), hi)


def distance_interval(x: BoundedFeatures, y: BoundedFeatures, eps: float, perturbed: str = "x"):
    """Sound (lo, hi) on d(x + δ, y) ("x") or d(x + δ, y + δ') ("both"), widened for the caller's rounding."""
    x, y = _same_batch(x, y)
    lo, hi = interval_angles(x, y, eps, perturbed)
    return widen_distance(distance_of_angle(lo), distance_of_angle(hi), x.dtype, x.dim)


def threshold_radius(x: BoundedFeatures, y: BoundedFeatures, tau: float, perturbed: str = "x"):
    """(decision d <= tau, certified radius, d): the largest eps under which the decision cannot change."""
    tau = float(tau)
    if not (0 <= tau <= 2):
        raise InputError(f"tau must lie in [0, 2] (d = 1 - cos), got {tau}")
    x, y = _same_batch(x, y)
    d = cosine_distance(x.u, y.u)
    decision = d <= tau

    def pred(eps: torch.Tensor) -> torch.Tensor:
        lo, hi = distance_interval(x, y, eps, perturbed)
        return torch.where(decision, hi <= tau, lo > tau)

    hi_eps = x.eps_limit()
    if perturbed == "both":
        hi_eps = torch.minimum(hi_eps, y.eps_limit())
    return decision, largest_true(pred, hi_eps), d


# ----------------------------------------------------------------------------------------------
@dataclass
class Top1Certificate:
    """Top-1 neighbour of each query in a gallery and the radius within which it cannot change.

    normalized: True when the gallery rows were normalised here (``normalize=True``) before ranking.
    """

    index: torch.Tensor
    radius: torch.Tensor
    margin: torch.Tensor
    gnorm: torch.Tensor
    normalized: bool = False


def check_unit_rows(gallery: torch.Tensor, tol: float = UNIT_TOL, chunk: int = 65536) -> float:
    """Largest | ||row|| - 1 | of a gallery; InputError when it exceeds ``tol`` (or rows are not finite)."""
    worst = 0.0
    for j in range(0, gallery.shape[0], chunk):
        n = gallery[j:j + chunk].detach().to(F64).norm(dim=1)
        if not bool(torch.isfinite(n).all()):
            raise InputError("gallery contains NaN or Inf")
        worst = max(worst, float((n - 1).abs().max()))
    if worst > tol:
        raise InputError(
            f"gallery rows must be unit vectors (stored embeddings, e.g. metric.embed); the largest | ||row|| - 1 | "
            f"is {worst:.3g} > {tol:g}. Normalise them, or pass normalize=True to rank by cosine"
        )
    return worst


def top1_radius(
    query_features: Union[torch.Tensor, BoundedFeatures],
    gallery: torch.Tensor,
    lipschitz: float = 1.0,
    rel_error: Optional[float] = None,
    gallery_error: Optional[float] = None,
    chunk: int = 65536,
    unit_tol: float = UNIT_TOL,
    normalize: bool = False,
    unit_checked: bool = False,
) -> Top1Certificate:
    """Top-1 neighbour of each query and its certified radius, from precomputed numbers.

    query_features: the queries' *raw* features with their float allowance (a :class:`BoundedFeatures`,
    e.g. from ``certify.bounded_features``), or a plain (N, D) tensor of raw features g(q) with
    ``lipschitz`` K (caller's pixels) and ``rel_error`` (a declared relative error; default the legacy
    calibrated REL_FACTOR·eps of its dtype -- not a proof). gallery: (M, D) stored *unit* embeddings;
    ranking is by inner product with these rows, the decision of a system that uses them. Rows whose
    norm is off 1 by more than ``unit_tol`` are refused (the candidate pruning below uses
    ``||a - b|| <= 2(1 + unit_tol)``; a non-unit gallery would make it skip competitors), unless
    ``normalize=True``, which ranks by cosine on normalised rows and says so in the result.
    ``unit_checked=True`` skips the check for a gallery the caller has already checked (retrieval
    checks once per search, not per query). gallery_error: chord by which a stored vector may differ
    from what the ranking uses (default 64·sqrt(D)·eps of the gallery dtype).

    For the top-1 a and a competitor b (margin m_b = <f(q), a - b>) the ranking holds on every cap
    of half-angle φ < acos(κ/||a-b||) - β_b (cos β_b = m_b/||a-b||); the radius is the minimum over b.
    Since sin ψ_b >= m_b/Cmax - 2κ/m_b (Cmax = 2(1 + unit_tol)), only competitors whose lower bound is
    below the current best need the exact test.
    """
    if gallery.dim() != 2:
        raise InputError(f"top1_radius needs a gallery (M, D), got shape {tuple(gallery.shape)}")
    if gallery.shape[0] < 1:
        raise InputError("top1_radius: empty gallery")
    if isinstance(query_features, BoundedFeatures):
        q = query_features
    else:
        if not isinstance(query_features, torch.Tensor) or query_features.dim() != 2:
            raise InputError(f"top1_radius needs query_features (N, D), got {getattr(query_features, 'shape', query_features)!r}")
        K = float(lipschitz)
        if not (K > 0 and math.isfinite(K)):
            raise InputError(f"lipschitz must be positive and finite, got {lipschitz}")
        rel = REL_FACTOR * _unit_eps(query_features.dtype) if rel_error is None else float(rel_error)
        q = BoundedFeatures.declared(query_features, K, rel)
    if q.dim != gallery.shape[1]:
        raise InputError(f"query features have {q.dim} dimensions, the gallery {gallery.shape[1]}")
    dim = gallery.shape[1]
    gal = gallery.detach()
    if normalize:
        gal = gal.to(F64)
        gal = gal / gal.norm(dim=1, keepdim=True).clamp_min(1e-300)
        tol = 64 * dim * EPS64
    else:
        if not unit_checked:
            check_unit_rows(gal, unit_tol, chunk)
        tol = unit_tol
    cmax = 2 * (1 + tol)
    kg = 64.0 * math.sqrt(dim) * _unit_eps(gal.dtype) if gallery_error is None else float(gallery_error)
    U, G = q.u, q.G
    n, m = U.shape[0], gal.shape[0]
    index = torch.empty(n, dtype=torch.long)
    radius = torch.zeros(n, dtype=F64)
    margins = torch.zeros(n, dtype=F64)
    slack = 64 * dim * EPS64
    for i in range(n):
        u = U[i]
        scores = torch.cat([gal[j:j + chunk].to(F64) @ u for j in range(0, m, chunk)])
        a = int(scores.argmax())
        index[i] = a
        if m == 1:
            radius[i] = float("inf") if G[i] > 0 else 0.0
            margins[i] = float("inf")
            continue
        av = gal[a].to(F64)
        marg = scores[a] - scores  # approximate (error ~ D·eps64), used only to choose candidates
        marg[a] = float("inf")
        kappa = torch.tensor([2 * kg], dtype=F64)  # a and b may each be off by kg (the query's error is in its cap)
        first = torch.argsort(marg)[:1]
        s, M, _ = hemisphere_sine(u, av.expand(1, -1), gal[first].to(F64), kappa)
        best = float(s[0])
        margins[i] = float(M[0])
        mlow = (marg - slack).clamp_min(0)
        lower = torch.where(mlow > 0, mlow / cmax - 2 * kappa / mlow.clamp_min(1e-300), torch.full_like(mlow, -1.0))
        cand = torch.nonzero(lower < best + slack).flatten()
        for j in range(0, cand.numel(), chunk):
            idx = cand[j:j + chunk]
            s, _, _ = hemisphere_sine(u, av.expand(idx.numel(), -1), gal[idx].to(F64), kappa.expand(idx.numel()))
            best = min(best, float(s.min()))
        if G[i] > 0 and best > 0:
            eps = (G[i] * best - q.err[i]) / q.eval_lipschitz[i]
            radius[i] = max(float(eps), 0.0)
    return Top1Certificate(index=index, radius=radius, margin=margins, gnorm=G.clone(), normalized=bool(normalize))

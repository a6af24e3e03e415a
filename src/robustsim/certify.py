r"""Sound l2 certificates for Lipschitz embedding metrics (LipSim and any ``certified`` EmbeddingMetric).

Why: a certificate that an attack can break is worse than none. Every bound here is derived from
one fact, stated in the *caller's* pixel space, with a float-error allowance, and is tight for the
worst 1-Lipschitz network (no slack beyond that).

Set-up
------
The metric computes ``g(x) = h(R x)``: R is its resize to the native resolution (a linear map with
exact operator norm ||R||, :meth:`robustsim.preprocess.Resize.norm`), h is its network with
Lipschitz constant L (``metric.lipschitz``, w.r.t. the native [0, 1] input, including any
normalisation; centring by the feature mean is a projection and changes nothing). So g is
K-Lipschitz in the caller's pixels with ``K = L·||R||``. The embedding is ``f = g/||g||`` and
``d(x, y) = 1 - <f(x), f(y)> = 2 sin²(θ/2)``, θ the angle between f(x) and f(y): d is an increasing
function of that angle.

The one fact (exact cap lemma). Let ``G = ||g(x)|| > 0``. If ``||δ|| <= ε`` then
``||g(x+δ) - g(x)|| <= δ_g := K ε`` and, when ``δ_g < G``, the angle between f(x+δ) and f(x) is at
most ``φ = asin(δ_g / G)`` (the largest angle seen from the origin to a point of the ball of
radius δ_g around g(x) is reached on the tangent cone). When ``δ_g >= G`` the ball contains the
origin and f(x+δ) can be anything (φ = π). This is exact: a linear 1-Lipschitz g reaches every
point of that ball. (The paper's bound uses ``||f(x+δ) - f(x)|| <= δ_g``, i.e. it assumes
||g|| >= 1 on the ball; DESIGN §3.5 uses ``δ_g / (G - δ_g)``; the cap is sharper than both:
2 sin(φ/2) <= δ_g/G <= δ_g/(G - δ_g).)

2AFC, reference perturbed (the LipSim threat model). Let c, o be the embeddings of the closer and
the other image, ``C = ||c - o||``, ``M = <f(x), c - o> = d(x, o) - d(x, c)`` (both from
differences) and β the angle between f(x) and n = (c - o)/C, so cos β = M/C. The decision stays
iff ``<w, c - o> > 0`` for every w in the cap of half-angle φ around f(x); the minimum over the cap
is ``C cos(β + φ)``, so the condition is ``φ < π/2 - β`` i.e. ``δ_g/G < cos β = M/C``:

    ε* = G · M / (K · C)            (exact for the worst 1-Lipschitz g).

The paper's radius M/C (in native pixels, here ``M / (K·C)``) is ours divided by G: it is too large
(unsound) whenever ||g(x)|| < 1, and too small whenever ||g(x)|| > 1 (random and trained LipSim
models have ||g|| of 10-100). DESIGN §3.5's ``G·M/(C + M)`` is sound but smaller than ours.

x0 / x1 / both perturbed (reference fixed). With α_c, α_o the angles from f(x) to c and o
(``α = 2 asin(||u - v||/2)``, from the difference), the spherical triangle inequality moves each by
at most the cap angle of the perturbed image, and this is reached (push the image along the great
circle), so the decision is certified while ``φ_c(ε) + φ_o(ε) < α_o - α_c`` (a term is 0 for an
image that is not perturbed). Solved in closed form for one image, by bisection for both.

Distance intervals. ``θ(x+δ, y+δ') ∈ [θ - φ_x - φ_y, θ + φ_x + φ_y] ∩ [0, π]`` and
d = 2 sin²(θ/2): tighter than ``sqrt(2d) ± ρ`` with ρ = δ_g/(G - δ_g), and than the paper's |Δd| <= ε.
Thresholds ("d <= τ" / "d > τ", near-duplicate detection) and top-1 retrieval (every competitor b
must keep ``<w, a - b> > 0``, the 2AFC geometry with c = a, o = b) follow.

Floating point
--------------
``1 - cos`` cancels for near-duplicates, so nothing here subtracts nearly equal cosines: distances
are ``||u - v||²/2``, margins ``<u, c - o>`` with the difference formed first, angles
``2 asin(||u - v||/2)``; all scalar arithmetic runs in float64 on the (exactly up-cast) features.
What remains is the error of the network's own float32 forward pass. Model: the computed features
g̃ satisfy ``||g̃ - g|| <= r·||g̃||`` with r the *relative feature error* (``metric.float_rel_error``
when the metric declares one, else ``REL_FACTOR·eps(dtype)`` = 2^8·2^-23 ≈ 3.1e-5 for float32. Measured:
2.4e-7 on tiny LipSim nets, 6.4e-7 on the CPU default, 1.6e-6 on the official small architecture
(random weights, 224², 27 layers); ``tests/test_certify.py`` checks on many random LipSim nets and
near-duplicates that it stays >= 8× below the allowance. A network whose output is a small difference
of large terms (e.g. a large final bias making ||g|| << its activations) has a larger *relative* error:
use ``float_error="measure"`` (max of the default and 8× the error measured at the given inputs with a
float64 copy of the metric) or set ``metric.float_rel_error``. A certificate must hold for
what an attacker *evaluates* in float32, not only for the exact function, so each error is counted
twice (our computation vs the truth, the truth vs the attacker's evaluation):

- an unperturbed image's features are known within ``3 r G`` (2r + r², rounded up; an angle ``asin(3r)``);
- a perturbed image's evaluated features lie within ``δ_g = K ε (1 + r) + 3 r G`` of ours;

and each competitor's embedding error enters the 2AFC / top-1 condition as a chord κ subtracted
from the margin: ``C cos(β + φ) > κ``. A decision whose margin is within the float error gets
radius 0. Returned intervals are widened outward by the float error of the final ``||u - v||²/2``
sum (D·eps(dtype), relative).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import torch

from .errors import InputError
from .io import check_images

__all__ = [
    "TwoAFCCertificate",
    "ThresholdCertificate",
    "Top1Certificate",
    "two_afc",
    "distance_interval",
    "threshold",
    "threshold_radius",
    "top1",
    "top1_radius",
    "feature_error_allowance",
    "measure_float_error",
    "REL_FACTOR",
]

#: relative feature error allowed per unit roundoff of the features' dtype (see the module docstring).
REL_FACTOR = 2.0 ** 8
_F64 = torch.float64
_EPS64 = torch.finfo(_F64).eps
FloatError = Union[None, float, str]


# ----------------------------------------------------------------------------------------------
# result types
@dataclass
class TwoAFCCertificate:
    """Certified 2AFC decision for N triplets.

    closer: 0 if x0 is closer to ref, 1 if x1 (ties -> 0, radius 0).
    radius: largest l2 budget (caller's pixel units) under which the decision provably cannot change
        (0 where nothing can be certified).
    paper_radius: LipSim's formula ``M / ||f(x0) - f(x1)||`` in the same units (NaN when the paper has
        no formula for the threat model); unsound when ||g(ref)|| < 1.
    margin: ``d(ref, other) - d(ref, closer) >= 0``; d0, d1: the two distances; gnorm: ||g(ref)||.
    lipschitz: K = L·||R|| of the perturbed image(s) in the caller's pixels.
    """

    closer: torch.Tensor
    radius: torch.Tensor
    paper_radius: torch.Tensor
    margin: torch.Tensor
    d0: torch.Tensor
    d1: torch.Tensor
    gnorm: torch.Tensor
    lipschitz: torch.Tensor
    perturbed: str
    rel_error: float

    def certified(self, eps: float) -> torch.Tensor:
        """Boolean (N,): decision certified at l2 budget eps (caller's units)."""
        return self.radius > eps


@dataclass
class ThresholdCertificate:
    """Certified near-duplicate decision ``d(x, y) <= tau`` (True) or ``> tau`` (False)."""

    decision: torch.Tensor
    radius: torch.Tensor
    distance: torch.Tensor
    tau: float
    perturbed: str

    def certified(self, eps: float) -> torch.Tensor:
        return self.radius > eps


@dataclass
class Top1Certificate:
    """Top-1 neighbour of each query in a gallery and the radius within which it cannot change."""

    index: torch.Tensor
    radius: torch.Tensor
    margin: torch.Tensor
    gnorm: torch.Tensor


# ----------------------------------------------------------------------------------------------
# helpers
def _check_metric(metric: Any) -> None:
    if not getattr(metric, "certified", False):
        name = getattr(metric, "name", "") or type(metric).__name__
        raise InputError(f"{name} is not a certified (Lipschitz) metric; certificates need e.g. a LipSim model")
    for attr in ("features", "resize", "lipschitz"):
        if not hasattr(metric, attr):
            raise InputError(f"certified metric {type(metric).__name__} lacks `{attr}` (needs an EmbeddingMetric)")
    lip = float(metric.lipschitz)
    if not (lip > 0 and math.isfinite(lip)):
        raise InputError(f"metric.lipschitz must be a positive finite number, got {lip}")


def _check_eps(eps: float, name: str = "eps") -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {eps!r}") from None
    if not (e >= 0 and math.isfinite(e)):
        raise InputError(f"{name} must be a finite number >= 0, got {e}")
    return e


def _broadcast(n: int, *ts: torch.Tensor) -> list:
    out = []
    for t in ts:
        if t.shape[0] == n:
            out.append(t)
        elif t.shape[0] == 1:
            out.append(t.expand(n, *t.shape[1:]))
        else:
            raise InputError(f"batch sizes differ: {[u.shape[0] for u in ts]} (only 1-vs-N broadcasting is allowed)")
    return out


def _unit_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float32).eps)


def feature_error_allowance(metric: Any, dtype: torch.dtype = torch.float32, dim: int = 1) -> float:
    """Relative feature error r allowed in certificates: ``||g̃ - g|| <= r ||g̃||``.

    ``metric.float_rel_error`` when set (a model that knows its own error), else REL_FACTOR·eps(dtype),
    never below the float64 arithmetic error of our own scalar maths (16·D·eps64).
    """
    declared = getattr(metric, "float_rel_error", None)
    r = float(declared) if declared is not None else REL_FACTOR * _unit_eps(dtype)
    return max(r, 16.0 * dim * _EPS64)


def _raw_features(metric: Any, x: torch.Tensor) -> torch.Tensor:
    g = metric.features(x)
    if g.dim() != 2:
        g = g.flatten(1)
    if getattr(metric, "center", False):
        g = g - g.mean(dim=1, keepdim=True)
    return g


def measure_float_error(metric: Any, *images: torch.Tensor) -> float:
    """Largest relative error ``||g32 - g64|| / ||g64||`` of the metric's features on these images.

    Runs a float64 copy of the metric (double the memory, a few times the cost of a forward pass).
    """
    import copy

    m64 = copy.deepcopy(metric).to(_F64)
    worst = 0.0
    with torch.no_grad():
        for x in images:
            a = _raw_features(metric, x).to(_F64)
            b = _raw_features(m64, x.to(_F64))
            nb = b.norm(dim=1).clamp_min(1e-300)
            worst = max(worst, float(((a - b).norm(dim=1) / nb).max()))
    return worst


def _resolve_rel(metric: Any, float_error: FloatError, dtype: torch.dtype, dim: int, images) -> float:
    base = feature_error_allowance(metric, dtype, dim)
    if float_error is None:
        return base
    if isinstance(float_error, str):
        if float_error != "measure":
            raise InputError(f"float_error must be None, a number or 'measure', got {float_error!r}")
        return max(base, 8.0 * measure_float_error(metric, *images))
    r = _check_eps(float_error, "float_error")
    return max(r, 16.0 * dim * _EPS64)


class _Embedded:
    """Float64 view of one image batch: raw features, norm, unit embedding, Lipschitz constant K."""

    def __init__(self, metric: Any, x: torch.Tensor, name: str, g: Optional[torch.Tensor] = None):
        if g is None:
            x = check_images(x, name, min_size=getattr(metric, "min_size", 1))
            with torch.no_grad():
                g = _raw_features(metric, x)
        self.dtype = g.dtype
        self.g = g.detach().to(_F64)
        self.G = self.g.norm(dim=1)
        self.u = self.g / self.G.clamp_min(1e-300)[:, None]
        self.u[self.G == 0] = 0.0
        self.K = float(metric.lipschitz) * float(metric.resize.norm(tuple(x.shape[-2:])))
        self.x = x

    @staticmethod
    def many(metric: Any, **images: torch.Tensor) -> list:
        """Embed several batches with one forward pass per image size (cheaper than one per batch)."""
        checked = {k: check_images(v, k, min_size=getattr(metric, "min_size", 1)) for k, v in images.items()}
        groups: dict = {}
        for k, v in checked.items():
            groups.setdefault((tuple(v.shape[-2:]), v.dtype), []).append(k)
        feats = {}
        with torch.no_grad():
            for keys in groups.values():
                g = _raw_features(metric, torch.cat([checked[k] for k in keys]))
                for k, part in zip(keys, g.split([checked[k].shape[0] for k in keys])):
                    feats[k] = part
        return [_Embedded(metric, checked[k], k, feats[k]) for k in images]

    def expand(self, n: int) -> "_Embedded":
        if self.g.shape[0] != n:
            self.g, self.G, self.u = (t.expand(n, *t.shape[1:]) for t in (self.g, self.G, self.u))
        return self


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle between unit vectors from their difference (accurate for near-duplicates)."""
    return 2 * torch.asin(((u - v).norm(dim=-1) / 2).clamp(0, 1))


def _cap(delta: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Largest angle between g and a point within delta of it: asin(delta/G), or π once delta >= G."""
    ratio = delta / G.clamp_min(1e-300)
    return torch.where(ratio < 1, torch.asin(ratio.clamp(0, 1)), torch.full_like(ratio, math.pi))


def _chord(phi: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sin(phi.clamp(0, math.pi) / 2)


def _delta_pert(e: _Embedded, eps: Union[float, torch.Tensor], rel: float) -> torch.Tensor:
    """Feature displacement bound of a perturbed image, float errors included (module docstring)."""
    return e.K * eps * (1 + rel) + 3 * rel * e.G


def _phi(e: _Embedded, eps: Union[float, torch.Tensor, None], rel: float) -> torch.Tensor:
    if eps is None:  # not perturbed: only the two float errors
        return _cap(3 * rel * e.G, e.G)
    return _cap(_delta_pert(e, eps, rel), e.G)


def _eps_for_angle(e: _Embedded, budget: torch.Tensor, rel: float) -> torch.Tensor:
    """Largest ε whose cap angle stays below ``budget`` (closed form inverse of _phi)."""
    dmax = torch.where(budget >= math.pi / 2, e.G, e.G * torch.sin(budget.clamp(0, math.pi / 2)))
    eps = (dmax - 3 * rel * e.G) / (e.K * (1 + rel))
    return torch.where(budget > 0, eps.clamp_min(0), torch.zeros_like(eps))


def _largest(pred: Callable[[torch.Tensor], torch.Tensor], hi: torch.Tensor, iters: int = 80) -> torch.Tensor:
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


def _hemisphere_radius(u: torch.Tensor, c: torch.Tensor, o: torch.Tensor, kappa: torch.Tensor):
    """Cap sine bound for ``<w, c' - o'> > 0`` with w near u, c'/o' within chord κ of c/o.

    Returns (sin ψ clipped at 0, M, C): the decision survives every cap of half-angle φ < ψ.
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


def _outward(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype, dim: int):
    """Widen [lo, hi] by the relative error of the metric's own ||u - v||²/2 sum in ``dtype``."""
    w = (dim + 4) * _unit_eps(dtype)
    return (lo * (1 - w)).clamp(0, 2), (hi * (1 + w) + 1e-300).clamp(0, 2)


# ----------------------------------------------------------------------------------------------
# 2AFC
def two_afc(
    metric: Any,
    ref: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    perturbed: str = "ref",
    float_error: FloatError = None,
) -> TwoAFCCertificate:
    """Certify which of x0, x1 is closer to ref, and how far an l2 adversary must go to change that.

    perturbed: "ref" (LipSim's threat model: the reference moves, closed form ε* = G·M/(K·C)),
    "x0", "x1" or "both" (x0 and x1 each within ε; the reference fixed). Radii are in the caller's
    pixel units (the resize norm and ``metric.lipschitz`` are applied). One forward pass per image.
    See the module docstring for the derivation and the float-error allowance.
    """
    _check_metric(metric)
    if perturbed not in ("ref", "x0", "x1", "both"):
        raise InputError(f"perturbed must be 'ref', 'x0', 'x1' or 'both', got {perturbed!r}")
    er, e0, e1 = _Embedded.many(metric, ref=ref, x0=x0, x1=x1)
    n = max(er.g.shape[0], e0.g.shape[0], e1.g.shape[0])
    _broadcast(n, er.g, e0.g, e1.g)
    er, e0, e1 = er.expand(n), e0.expand(n), e1.expand(n)
    if not (er.g.shape[1] == e0.g.shape[1] == e1.g.shape[1]):
        raise InputError("ref, x0 and x1 give embeddings of different sizes")
    dim = er.g.shape[1]
    rel = _resolve_rel(metric, float_error, er.dtype, dim, (er.x, e0.x, e1.x))

    d0 = (er.u - e0.u).pow(2).sum(-1) / 2
    d1 = (er.u - e1.u).pow(2).sum(-1) / 2
    closer = (d1 < d0).long()
    one = closer.bool().unsqueeze(-1)
    c = torch.where(one, e1.u, e0.u)
    o = torch.where(one, e0.u, e1.u)
    Gc = torch.where(closer.bool(), e1.G, e0.G)
    Go = torch.where(closer.bool(), e0.G, e1.G)
    zero_g = (er.G == 0) | (e0.G == 0) | (e1.G == 0)

    if perturbed == "ref":
        kappa = _chord(_cap(3 * rel * Gc, Gc)) + _chord(_cap(3 * rel * Go, Go))
        s, M, C = _hemisphere_radius(er.u, c, o, kappa)
        radius = ((er.G * s - 3 * rel * er.G) / (er.K * (1 + rel))).clamp_min(0)
        paper = torch.where(C > 0, M / (C.clamp_min(1e-300) * er.K), torch.zeros_like(M)).clamp_min(0)
        K = torch.full_like(radius, er.K)
    else:
        M = (er.u * (c - o)).sum(-1)
        gap = _angle(er.u, o) - _angle(er.u, c) - 2 * _phi(er, None, rel)
        ec_sel = {"x0": e0, "x1": e1}
        if perturbed == "both":
            phi_fix = torch.zeros_like(gap)
            pert = [e0, e1]
        else:
            ep = ec_sel[perturbed]
            other = e1 if perturbed == "x0" else e0
            phi_fix = _phi(other, None, rel)
            pert = [ep]
        budget = gap - phi_fix
        if len(pert) == 1:
            radius = _eps_for_angle(pert[0], budget, rel)
        else:
            hi = torch.minimum((e0.G * (1 - 3 * rel)) / (e0.K * (1 + rel)), (e1.G * (1 - 3 * rel)) / (e1.K * (1 + rel)))
            hi = hi.clamp_min(0)

            def pred(eps: torch.Tensor) -> torch.Tensor:
                return _phi(e0, eps, rel) + _phi(e1, eps, rel) < budget

            radius = _largest(pred, hi)
        radius = torch.where(budget > 0, radius, torch.zeros_like(radius))
        paper = torch.full_like(radius, float("nan"))
        K = torch.full_like(radius, max(p.K for p in pert))
    radius = torch.where(zero_g | (d0 == d1), torch.zeros_like(radius), radius)
    margin = torch.where(closer.bool(), d0 - d1, d1 - d0)
    return TwoAFCCertificate(
        closer=closer, radius=radius, paper_radius=paper, margin=margin, d0=d0, d1=d1,
        gnorm=er.G.clone(), lipschitz=K, perturbed=perturbed, rel_error=rel,
    )


# ----------------------------------------------------------------------------------------------
# distance intervals and thresholds
def _pair(metric: Any, x: torch.Tensor, y: torch.Tensor, perturbed: str, float_error: FloatError):
    _check_metric(metric)
    if perturbed not in ("x", "both"):
        raise InputError(f"perturbed must be 'x' or 'both', got {perturbed!r}")
    ex, ey = _Embedded.many(metric, x=x, y=y)
    n = max(ex.g.shape[0], ey.g.shape[0])
    _broadcast(n, ex.g, ey.g)
    ex, ey = ex.expand(n), ey.expand(n)
    if ex.g.shape[1] != ey.g.shape[1]:
        raise InputError("x and y give embeddings of different sizes")
    rel = _resolve_rel(metric, float_error, ex.dtype, ex.g.shape[1], (ex.x, ey.x))
    return ex, ey, rel


def _interval_angles(ex: _Embedded, ey: _Embedded, eps, perturbed: str, rel: float):
    theta = _angle(ex.u, ey.u)
    spread = _phi(ex, eps, rel) + _phi(ey, eps if perturbed == "both" else None, rel)
    lo = (theta - spread).clamp(0, math.pi)
    hi = (theta + spread).clamp(0, math.pi)
    bad = (ex.G == 0) | (ey.G == 0)
    lo = torch.where(bad, torch.zeros_like(lo), lo)
    hi = torch.where(bad, torch.full_like(hi, math.pi), hi)
    return lo, hi


def _d_of_angle(a: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sin(a / 2).pow(2)


def distance_interval(
    metric: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    perturbed: str = "x",
    float_error: FloatError = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sound bounds (lo, hi), float64 (N,), on d(x+δ, y) (perturbed="x") or d(x+δ, y+δ')
    ("both", each perturbation within eps) over all ||δ||, ||δ'|| <= eps in the caller's pixels.

    Unbounded case (eps reaches ||g|| / K: the feature ball contains the origin) gives (0, 2).
    """
    eps = _check_eps(eps)
    ex, ey, rel = _pair(metric, x, y, perturbed, float_error)
    lo, hi = _interval_angles(ex, ey, eps, perturbed, rel)
    return _outward(_d_of_angle(lo), _d_of_angle(hi), ex.dtype, ex.g.shape[1])


def threshold(
    metric: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    tau: float,
    perturbed: str = "x",
    float_error: FloatError = None,
) -> ThresholdCertificate:
    """Certify the near-duplicate decision ``d(x, y) <= tau`` (decision True) or ``> tau`` (False).

    radius: the largest l2 budget (caller's units) under which the decision cannot change (0 when the
    distance is within the float error of tau). ``result.certified(eps)`` answers "is it certified at eps".
    """
    tau = _check_eps(tau, "tau")
    if tau > 2:
        raise InputError(f"tau must lie in [0, 2] (d = 1 - cos), got {tau}")
    ex, ey, rel = _pair(metric, x, y, perturbed, float_error)
    dim = ex.g.shape[1]
    d = (ex.u - ey.u).pow(2).sum(-1) / 2
    decision = d <= tau

    def pred(eps: torch.Tensor) -> torch.Tensor:
        lo_a, hi_a = _interval_angles(ex, ey, eps, perturbed, rel)
        lo, hi = _outward(_d_of_angle(lo_a), _d_of_angle(hi_a), ex.dtype, dim)
        return torch.where(decision, hi <= tau, lo > tau)

    hi_eps = (ex.G * (1 - 3 * rel) / (ex.K * (1 + rel))).clamp_min(0)
    if perturbed == "both":
        hi_eps = torch.minimum(hi_eps, (ey.G * (1 - 3 * rel) / (ey.K * (1 + rel))).clamp_min(0))
    radius = _largest(pred, hi_eps)
    return ThresholdCertificate(decision=decision, radius=radius, distance=d, tau=tau, perturbed=perturbed)


def threshold_radius(metric: Any, x: torch.Tensor, y: torch.Tensor, tau: float, perturbed: str = "x",
                     float_error: FloatError = None) -> torch.Tensor:
    """The largest certified l2 budget of the decision "d(x, y) <= tau" (or "> tau"); see :func:`threshold`."""
    return threshold(metric, x, y, tau, perturbed, float_error).radius


# ----------------------------------------------------------------------------------------------
# top-1 retrieval
def top1_radius(
    query_features: torch.Tensor,
    gallery: torch.Tensor,
    lipschitz: float = 1.0,
    rel_error: Optional[float] = None,
    gallery_error: Optional[float] = None,
    chunk: int = 65536,
) -> Top1Certificate:
    """Top-1 neighbour of each query and its certified radius, from precomputed numbers.

    query_features: (N, D) *raw* features g(q) of the queries (``metric.features``, before
    normalisation: the radius needs ||g(q)||). gallery: (M, D) stored gallery embeddings (unit
    vectors, e.g. ``metric.embed``); ranking is by inner product, the decision of a system that
    uses these stored vectors. lipschitz: K = metric.lipschitz · resize norm of the *query* images
    (see :func:`top1`, which does this). rel_error: relative feature error of the queries
    (default REL_FACTOR·eps of query_features' dtype); gallery_error: a chord by which a stored
    vector may differ from what the ranking uses (default 64·sqrt(D)·eps of the gallery dtype).

    For the top-1 a and a competitor b (margin m_b = <f(q), a - b>) the ranking holds on every cap
    of half-angle φ < acos(κ/||a-b||) - β_b (cos β_b = m_b/||a-b||); the radius is the minimum over b.
    Only competitors with m_b < 2·(current best sine bound) + κ can attain the minimum (||a-b|| <= 2),
    so the exact difference-based test runs on those only.
    """
    if query_features.dim() != 2 or gallery.dim() != 2 or query_features.shape[1] != gallery.shape[1]:
        raise InputError(
            f"top1_radius needs query_features (N, D) and gallery (M, D), got {tuple(query_features.shape)} "
            f"and {tuple(gallery.shape)}"
        )
    if gallery.shape[0] < 1:
        raise InputError("top1_radius: empty gallery")
    K = float(lipschitz)
    if not (K > 0 and math.isfinite(K)):
        raise InputError(f"lipschitz must be positive and finite, got {lipschitz}")
    dim = gallery.shape[1]
    rel = REL_FACTOR * _unit_eps(query_features.dtype) if rel_error is None else float(rel_error)
    rel = max(rel, 16.0 * dim * _EPS64)
    kg = 64.0 * math.sqrt(dim) * _unit_eps(gallery.dtype) if gallery_error is None else float(gallery_error)
    g = query_features.detach().to(_F64)
    G = g.norm(dim=1)
    U = g / G.clamp_min(1e-300)[:, None]
    gal = gallery.detach()
    n, m = g.shape[0], gal.shape[0]
    index = torch.empty(n, dtype=torch.long)
    radius = torch.zeros(n, dtype=_F64)
    margins = torch.zeros(n, dtype=_F64)
    for i in range(n):
        u = U[i]
        scores = torch.cat([gal[j:j + chunk].to(_F64) @ u for j in range(0, m, chunk)])
        a = int(scores.argmax())
        index[i] = a
        if m == 1:
            radius[i] = float("inf") if G[i] > 0 else 0.0
            margins[i] = float("inf")
            continue
        av = gal[a].to(_F64)
        marg = scores[a] - scores  # approximate (error ~ D·eps64), used only to choose candidates
        marg[a] = float("inf")
        kappa = torch.tensor([2 * kg], dtype=_F64)  # a and b may each be off by kg (the query's error is in δ)
        order = torch.argsort(marg)
        # the competitor with the smallest margin first; then every b whose margin could still beat it:
        # sin ψ_b >= m_b/2 - 2κ/m_b (cos β_b >= m_b/2 as ||a-b|| <= 2, and k_b = κ/||a-b|| <= κ/m_b)
        first = order[:1]
        s, M, _ = _hemisphere_radius(u, av.expand(1, -1), gal[first].to(_F64), kappa)
        best = float(s[0])
        margins[i] = float(M[0])
        slack = 64 * dim * _EPS64
        mlow = (marg - slack).clamp_min(0)
        lower = torch.where(mlow > 0, mlow / 2 - 2 * kappa / mlow.clamp_min(1e-300), torch.full_like(mlow, -1.0))
        cand = torch.nonzero(lower < best + slack).flatten()
        for j in range(0, cand.numel(), chunk):
            idx = cand[j:j + chunk]
            s, _, _ = _hemisphere_radius(u, av.expand(idx.numel(), -1), gal[idx].to(_F64), kappa.expand(idx.numel()))
            best = min(best, float(s.min()))
        if G[i] > 0 and best > 0:
            eps = (G[i] * best - 3 * rel * G[i]) / (K * (1 + rel))
            radius[i] = max(float(eps), 0.0)
    return Top1Certificate(index=index, radius=radius, margin=margins, gnorm=G)


def top1(metric: Any, query: torch.Tensor, gallery: torch.Tensor, float_error: FloatError = None) -> Top1Certificate:
    """Certified top-1 retrieval: ``gallery`` is either images (N×3×H×W, embedded here) or stored
    unit embeddings (M×D). Returns the top-1 index of each query and the l2 radius (caller's pixels)
    within which no perturbation of the query can change it."""
    _check_metric(metric)
    eq = _Embedded(metric, query, "query")
    if gallery.dim() == 4:
        with torch.no_grad():
            gallery = metric.embed(gallery)
    rel = _resolve_rel(metric, float_error, eq.dtype, eq.g.shape[1], (eq.x,))
    return top1_radius(eq.g, gallery, lipschitz=eq.K, rel_error=rel)

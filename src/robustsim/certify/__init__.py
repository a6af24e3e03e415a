r"""Sound l2 certificates for Lipschitz embedding metrics (LipSim and any ``certified`` EmbeddingMetric).

Why: a certificate that an attack can break is worse than none. This package has two layers:

- :mod:`robustsim.certify.geometry` -- public feature-space geometry: given raw features with their
  float allowance (:class:`BoundedFeatures`), the exact cap lemma gives the 2AFC radius
  ``ε* = G·M/(K·C)`` (reference perturbed) and the x0/x1/both, distance-interval, threshold and top-1
  bounds. Retrieval and the certified fine-tuning loss use it directly.
- :mod:`robustsim.certify.rounding` -- the float allowance: a *proven* bound on the rounding of a
  LipSim forward pass (the sum over layers of each layer's local rounding error at its computed
  input, since every exact layer is 1-Lipschitz), under a precision guard (TF32, autocast,
  cuDNN/NNPACK off; half precision refused). By default the three embeddings are recomputed in
  float64, where that bound is ~1e-8 relative; the float32 version of the bound (optionally covering
  every float32 evaluation of a perturbed input, with a float64 spot check) is proven but worst-case,
  ~0.1 relative on the shipped model. Other certified metrics fall back to a float64 copy.

This module is the image-level API on top: it validates images, computes bounded features with one
forward pass per image size and calls the geometry. Radii are l2, in the *caller's* pixel units
(the metric's resize R is a linear map of exact norm ||R||, so K = metric.lipschitz·||R||).

``float_error``: None / ``"float64"`` (default) -- float64 recomputation with the proven bound: a
certificate about the exact network; ``"float32"`` -- the model's own float32 pass with the proven
bound extended to every float32 evaluation (an attacker's): cheap and sound, but worst-case
(certifies little on trained models); a number r -- a relative feature error the caller vouches for,
added to the default allowance (0: the default).

Cost (docs/BENCHMARKS.md, "Certificates in floating point"): the float64 default costs several times
a natural float32 evaluation on CPU (torch's float64 convolutions are ~8x slower than oneDNN's
float32 ones); the float32 mode about 1.1x. No proven bound on float32 arithmetic is tight enough to
be useful here (module :mod:`.rounding`), hence the default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Tuple

import torch

from ..errors import InputError
from ..images import check_images
from . import geometry, rounding
from .geometry import (
    REL_FACTOR, UNIT_TOL, BoundedFeatures, Top1Certificate, check_unit_rows, top1_radius,
)
from .rounding import FloatError, PrecisionError, bounded_features, check_metric, precision_guard

__all__ = [
    "TwoAFCCertificate",
    "ThresholdCertificate",
    "Top1Certificate",
    "BoundedFeatures",
    "PrecisionError",
    "two_afc",
    "distance_interval",
    "threshold",
    "threshold_radius",
    "top1",
    "top1_radius",
    "bounded_features",
    "precision_guard",
    "check_unit_rows",
    "feature_error_allowance",
    "measure_float_error",
    "geometry",
    "rounding",
    "REL_FACTOR",
    "UNIT_TOL",
]


# ----------------------------------------------------------------------------------------------
# result types
@dataclass
class TwoAFCCertificate:
    """Certified 2AFC decision for N triplets.

    closer: 0 if x0 is closer to ref, 1 if x1 (ties -> 0, radius 0).
    radius: largest l2 budget (caller's pixel units) under which the decision provably cannot change,
        for the exact network and for every float evaluation of it (0 where nothing can be certified).
    paper_radius: LipSim's formula ``M / ||f(x0) - f(x1)||`` in the same units (NaN when the paper has
        no formula for the threat model); unsound when ||g(ref)|| < 1.
    margin: ``d(ref, other) - d(ref, closer) >= 0``; d0, d1: the two distances; gnorm: ||g(ref)||.
    lipschitz: K = L·||R|| of the perturbed image(s) in the caller's pixels.
    float_error: the allowance err of the reference (feature-space radius); method: how it was obtained
        ("proven", "float64", "declared", "exact").
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
    float_error: torch.Tensor
    method: str = "proven"

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


# ----------------------------------------------------------------------------------------------
# helpers
def _check_eps(eps: float, name: str = "eps") -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {eps!r}") from None
    if not (e >= 0 and math.isfinite(e)):
        raise InputError(f"{name} must be a finite number >= 0, got {e}")
    return e


def _embed_many(metric: Any, float_error: FloatError, **images: torch.Tensor) -> list:
    """Bounded features of several batches, one forward pass per image size (cheaper than one per batch)."""
    check_metric(metric)
    min_size = getattr(metric, "min_size", 1)
    checked = {k: check_images(v, k, min_size=min_size) for k, v in images.items()}
    groups: dict = {}
    for k, v in checked.items():
        groups.setdefault(tuple(v.shape[-2:]), []).append(k)
    feats = {}
    for gi, keys in enumerate(groups.values()):
        dt = max((checked[k].dtype for k in keys), key=lambda d: torch.finfo(d).bits)
        bf = bounded_features(metric, torch.cat([checked[k].to(dt) for k in keys]), "+".join(keys),
                              float_error, spot_check=gi == 0)
        start = 0
        for k in keys:
            n = checked[k].shape[0]
            feats[k] = bf.select(slice(start, start + n))
            start += n
    return [feats[k] for k in images]


def _broadcast(*fs: BoundedFeatures) -> list:
    n = max(len(f) for f in fs)
    for f in fs:
        if len(f) not in (1, n):
            raise InputError(f"batch sizes differ: {[len(u) for u in fs]} (only 1-vs-N broadcasting is allowed)")
    return [f.expand(n) for f in fs]


def feature_error_allowance(metric: Any, dtype: torch.dtype = torch.float32, dim: int = 1) -> float:
    """The *declared* relative feature error of a metric (``metric.float_rel_error``), else the legacy
    calibrated REL_FACTOR·eps(dtype). Certificates no longer use it by default (they prove their
    allowance, :mod:`.rounding`); kept for callers that pass ``float_error=`` a number."""
    declared = getattr(metric, "float_rel_error", None)
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float32).eps)
    r = float(declared) if declared is not None else REL_FACTOR * eps
    return max(r, 16.0 * dim * geometry.EPS64)


def measure_float_error(metric: Any, *images: torch.Tensor) -> float:
    """Largest relative error ``||g32 - g64|| / ||g64||`` of the metric's raw features on these images,
    against a float64 copy of the metric (a diagnostic; certificates use the proven bound)."""
    import copy

    m64 = copy.deepcopy(metric).to(torch.float64)
    worst = 0.0
    with torch.no_grad():
        for x in images:
            a = metric.raw_features(x).to(torch.float64)
            b = m64.raw_features(x.to(torch.float64))
            nb = b.norm(dim=1).clamp_min(1e-300)
            worst = max(worst, float(((a - b).norm(dim=1) / nb).max()))
    return worst


# ----------------------------------------------------------------------------------------------
def two_afc(
    metric: Any,
    ref: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    perturbed: str = "ref",
    float_error: FloatError = None,
) -> TwoAFCCertificate:
    """Certify which of x0, x1 is closer to ref, and how far an l2 adversary must go to change that.

    perturbed: "ref" (LipSim's threat model: the reference moves, ε* = G·M/(K·C) in exact arithmetic),
    "x0", "x1" or "both" (x0 and x1 each within ε; the reference fixed). Radii are in the caller's
    pixel units. One forward pass per image size. See :mod:`.geometry` and :mod:`.rounding`.
    """
    if perturbed not in ("ref", "x0", "x1", "both"):
        raise InputError(f"perturbed must be 'ref', 'x0', 'x1' or 'both', got {perturbed!r}")
    er, e0, e1 = _broadcast(*_embed_many(metric, float_error, ref=ref, x0=x0, x1=x1))
    if not (er.dim == e0.dim == e1.dim):
        raise InputError("ref, x0 and x1 give embeddings of different sizes")
    r = geometry.two_afc_bounds(er, e0, e1, perturbed)
    return TwoAFCCertificate(perturbed=perturbed, float_error=er.err.clone(), method=er.method, **r)


def _pair(metric: Any, x: torch.Tensor, y: torch.Tensor, perturbed: str, float_error: FloatError):
    if perturbed not in ("x", "both"):
        raise InputError(f"perturbed must be 'x' or 'both', got {perturbed!r}")
    ex, ey = _broadcast(*_embed_many(metric, float_error, x=x, y=y))
    if ex.dim != ey.dim:
        raise InputError("x and y give embeddings of different sizes")
    return ex, ey


def distance_interval(
    metric: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    perturbed: str = "x",
    float_error: FloatError = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sound bounds (lo, hi), float64 (N,), on d(x+δ, y) (perturbed="x") or d(x+δ, y+δ')
    ("both", each perturbation within eps) over all ||δ||, ||δ'|| <= eps in the caller's pixels, as
    computed by any float evaluation of the metric. Unbounded case (the feature ball contains the
    origin) gives (0, 2)."""
    eps = _check_eps(eps)
    ex, ey = _pair(metric, x, y, perturbed, float_error)
    return geometry.distance_interval(ex, ey, eps, perturbed)


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
    ex, ey = _pair(metric, x, y, perturbed, float_error)
    decision, radius, d = geometry.threshold_radius(ex, ey, tau, perturbed)
    return ThresholdCertificate(decision=decision, radius=radius, distance=d, tau=tau, perturbed=perturbed)


def threshold_radius(metric: Any, x: torch.Tensor, y: torch.Tensor, tau: float, perturbed: str = "x",
                     float_error: FloatError = None) -> torch.Tensor:
    """The largest certified l2 budget of the decision "d(x, y) <= tau" (or "> tau"); see :func:`threshold`."""
    return threshold(metric, x, y, tau, perturbed, float_error).radius


def top1(metric: Any, query: torch.Tensor, gallery: torch.Tensor, float_error: FloatError = None,
         normalize: bool = False) -> Top1Certificate:
    """Certified top-1 retrieval: ``gallery`` is either images (N×3×H×W, embedded here) or stored
    unit embeddings (M×D, checked to be unit rows; ``normalize=True`` normalises them instead).
    Returns the top-1 index of each query and the l2 radius (caller's pixels) within which no
    perturbation of the query can change it."""
    (eq,) = _embed_many(metric, float_error, query=query)
    if gallery.dim() == 4:
        with torch.no_grad():
            gallery = metric.embed(gallery)
    return top1_radius(eq, gallery, normalize=normalize)

"""Perceptual attacks on classifiers (Laidlaw, Singla & Feizi, ICLR 2021): PPGD and LPA.

The threat model bounds a perceptual distance instead of a pixel norm: d(x, x_adv) <= bound, with a
pluggable bound metric (default LPIPS-AlexNet, bound 0.5). With R-LPIPS as the bound metric the same
attacks are R-PPGA / R-LPA (:func:`r_ppga`, :func:`r_lpa`).

* **PPGD**: each step linearises the metric around the current iterate. For the metrics here d
  behaves like a squared norm near the diagonal, d(x̃, x̃ + δ) ≈ ½ δᵀHδ, so the step that most
  increases the classifier loss for a given perceptual length solves H u = ∇loss; a few
  conjugate-gradient iterations do that with Hessian-vector products (finite differences of the
  metric's gradient, so any differentiable metric works). The step is scaled to length η in
  √d units, then the iterate is projected back onto the bound.
* **LPA**: gradient ascent on loss - λ·relu(d(x, x̃) - bound), steps normalised to a given √d
  length (measured by a finite difference along the step) and decaying; λ starts at 0.01 and is
  multiplied by 10 after each outer round for the samples still outside the bound.

Step lengths are in √d units (√bound is the radius); the projection onto {d <= bound} is a
bisection on the segment from x to the iterate, which always ends on the feasible side. At the end
every returned example is checked with the metric's own call: an example that is not within the
bound is replaced by the clean input and counted as a failure (reported in the result).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..metrics.base import Metric
from .engine import check_labels, check_steps, make_generator, margin
from .twoafc import metric_distance

DEFAULT_METRIC = "lpips-alex"
DEFAULT_R_METRIC = "rlpips-linf-x0"
DEFAULT_BOUND = 0.5


@dataclass
class PerceptualAttackResult:
    """x_adv (within the bound, verified; the clean input where that failed), and per-sample facts."""

    x_adv: torch.Tensor
    success: torch.Tensor  # misclassified and within the bound
    distance: torch.Tensor  # d(x, x_adv) by the bound metric
    within_bound: torch.Tensor  # False: the attack's point was outside and x_adv is the clean input
    bound: float

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    @property
    def n_outside(self) -> int:
        return int((~self.within_bound).sum())


def resolve_metric(metric: Union[None, str, Metric], default: str) -> Metric:
    """A Metric instance, a hub name, or None (the default bound metric)."""
    if metric is None or isinstance(metric, str):
        import robustsim

        return robustsim.load(metric or default)
    if not isinstance(metric, torch.nn.Module):
        raise InputError(f"bound_metric must be a Metric or a model name, got {type(metric).__name__}")
    return metric


def _check_bound(bound: float) -> float:
    try:
        b = float(bound)
    except (TypeError, ValueError):
        raise InputError(f"bound must be a number, got {bound!r}") from None
    if not math.isfinite(b) or b <= 0:
        raise InputError(f"bound must be a positive finite number, got {bound!r}")
    return b


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


class _Geometry:
    """Local geometry of the bound metric: distances, finite-difference rates and Hessian products."""

    def __init__(self, metric: Metric, h: float = 1e-2):
        self.metric = metric
        self.h = h

    def dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return metric_distance(self.metric, a, b)

    def rate(self, base: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """√d(base, base + h·v̂) / h: the √d length of a unit l2 step along v."""
        vhat = v / _bcast(_norm(v) + 1e-12, v)
        with torch.no_grad():
            d = self.dist(base, base + self.h * vhat)
        return d.clamp_min(0).sqrt() / self.h

    def grad_at(self, base: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.detach().requires_grad_(True)
        with torch.enable_grad():
            d = self.dist(base, y)
        (g,) = torch.autograd.grad(d.sum(), y)
        return g

    def hvp(self, base: torch.Tensor, g0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H v with H the Hessian of d(base, ·) at base, by a forward difference of gradients."""
        n = _norm(v)
        vhat = v / _bcast(n + 1e-12, v)
        g = self.grad_at(base, base + self.h * vhat)
        return (g - g0) / self.h * _bcast(n, v)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor, bound: float, iters: int = 14) -> torch.Tensor:
        """Largest t with d(x, x + t(x_adv - x)) <= bound, by bisection; rows already inside stay."""
        with torch.no_grad():
            d = self.dist(x, x_adv)
            out = x_adv.clone()
            need = (d > bound).nonzero().squeeze(1)
            if need.numel() == 0:
                return out
            xs, xa = x[need], x_adv[need]
            lo = torch.zeros(need.numel(), device=x.device)
            hi = torch.ones(need.numel(), device=x.device)
            for _ in range(iters):
                mid = (lo + hi) / 2
                dm = self.dist(xs, xs + _bcast(mid, xs) * (xa - xs))
                ok = dm <= bound
                lo = torch.where(ok, mid, lo)
                hi = torch.where(ok, hi, mid)
            out[need] = xs + _bcast(lo, xs) * (xa - xs)
        return out


def _loss_grad(classifier, x_adv, y, kappa: float = math.inf):
    """Capped margin loss min(-margin, κ) (maximised), its gradient, and the margin."""
    z = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier(z)
        m = margin(logits, y)
        loss = torch.clamp(-m, max=kappa)
    if not loss.requires_grad:
        raise InputError("the classifier gives no gradient with respect to its input; gradient attacks cannot run")
    (g,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), torch.nan_to_num(g), m.detach()


def _start(x: torch.Tensor, seed: int) -> torch.Tensor:
    gen = make_generator(seed, x.device)
    return (x + 0.01 * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)


def _finish(classifier, geo: _Geometry, x, y, x_adv, bound) -> PerceptualAttackResult:
    """Verify with the metric's public call; outside the bound -> the clean input, a failure."""
    with torch.no_grad():
        d = geo.metric(x, x_adv)
        inside = d <= bound
        x_out = torch.where(_bcast(inside, x), x_adv, x)
        d = torch.where(inside, d, torch.zeros_like(d))
        wrong = margin(classifier(x_out), y) < 0
    return PerceptualAttackResult(x_out.detach(), wrong & inside, d, inside, bound)


def _prepare(classifier, x, y, bound_metric, bound, default):
    from .engine import check_any_images as _check_any_images

    x = _check_any_images(x).detach()
    if x.shape[1] != 3:
        raise InputError("perceptual attacks need RGB images (the bound metric is defined on 3 channels)")
    bound = _check_bound(bound)
    y = check_labels(classifier, x, y)
    metric = resolve_metric(bound_metric, default)
    check_metric_gradient(metric, x)
    return x, y, metric, bound


def check_metric_gradient(metric, x: torch.Tensor) -> None:
    """Refuse, in one line, a bound metric that gives no input gradient (both attacks step along it).

    Probed once at a point near the first image (at y = x itself a smooth metric's gradient is zero).
    Without this, PPGD failed deep inside autograd and LPA silently ignored the bound until its final
    projection.
    """
    name = getattr(metric, "name", "") or type(metric).__name__
    x0 = x[:1].detach()
    gen = make_generator(0, x.device)
    y = (x0 + 0.03 * torch.randn(x0.shape, generator=gen).to(x.device)).clamp(0, 1).requires_grad_(True)
    try:
        with torch.enable_grad():
            d = metric_distance(metric, x0, y)
    except Exception as e:  # noqa: BLE001 - any failure here is the metric's, reported in one line
        raise InputError(f"bound metric {name} cannot be evaluated on these images ({type(e).__name__}: {e})") from None
    g = None
    if isinstance(d, torch.Tensor) and d.requires_grad:
        (g,) = torch.autograd.grad(d.sum(), y, allow_unused=True)
    if g is None or not bool(torch.isfinite(g).all()) or not bool((g != 0).any()):
        raise InputError(f"bound metric {name} gives no gradient with respect to its input (computed under no_grad, "
                         f"detached or piecewise constant); perceptual attacks need a differentiable metric")


def ppgd(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    bound_metric: Union[None, str, Metric] = None,
    bound: float = DEFAULT_BOUND,
    steps: int = 10,
    cg_steps: int = 5,
    step_size: Optional[float] = None,
    seed: int = 0,
    progress: bool = False,
) -> PerceptualAttackResult:
    """Perceptual PGD: steps in the metric's local geometry (CG), projected onto d(x, ·) <= bound.

    step_size is in √d units (default 2·√bound / steps, as the paper's 2·bound/steps for an
    unsquared distance). Returns a :class:`PerceptualAttackResult`.
    """
    x, y, metric, bound = _prepare(classifier, x, y, bound_metric, bound, DEFAULT_METRIC)
    steps, cg_steps = check_steps(steps, cg_steps)
    geo = _Geometry(metric)
    eta = 2 * math.sqrt(bound) / steps if step_size is None else float(step_size)
    x_adv = _start(x, seed)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    x_found = x.clone()
    for _ in tqdm(range(steps), desc="ppgd", leave=False, disable=not progress):
        a = (~found).nonzero().squeeze(1)
        if a.numel() == 0:
            break
        xa, xs, ya = x_adv[a], x[a], y[a]
        _, g, _ = _loss_grad(classifier, xa, ya)
        if not bool((g != 0).any()):
            raise InputError("the classifier loss has an all-zero input gradient; PPGD cannot move")
        g0 = geo.grad_at(xa, xa)
        # conjugate gradient on H u = g, per sample
        u = torch.zeros_like(g)
        r = g.clone()
        p = r.clone()
        rr = (r * r).flatten(1).sum(1)
        for _ in range(cg_steps):
            hp = geo.hvp(xa, g0, p)
            php = (p * hp).flatten(1).sum(1)
            ok = (php > 0) & (rr > 0)
            alpha = torch.where(ok, rr / php.clamp_min(1e-30), torch.zeros_like(rr))
            u = u + _bcast(alpha, u) * p
            r = r - _bcast(alpha, r) * hp
            rr_new = (r * r).flatten(1).sum(1)
            beta = torch.where(ok, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr))
            p = r + _bcast(beta, p) * p
            rr = rr_new
        u = torch.where(_bcast(_norm(u) > 0, u), u, g)  # CG broke down at once: plain gradient
        rate = geo.rate(xa, u).clamp_min(1e-6)
        step = u / _bcast(_norm(u) + 1e-12, u) * _bcast(eta / rate, u)
        xn = geo.project(xs, (xa + step).clamp(0, 1), bound)
        x_adv[a] = xn
        with torch.no_grad():
            wrong = margin(classifier(xn), ya) < 0
        new = a[wrong]
        x_found[new] = xn[wrong]
        found[new] = True
    x_final = torch.where(_bcast(found, x), x_found, geo.project(x, x_adv, bound))
    return _finish(classifier, geo, x, y, x_final, bound)


def lpa(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    bound_metric: Union[None, str, Metric] = None,
    bound: float = DEFAULT_BOUND,
    steps: int = 20,
    rounds: int = 5,
    step_size: Optional[float] = None,
    lam: float = 0.01,
    kappa: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> PerceptualAttackResult:
    """Lagrangian Perceptual Attack: maximise min(-margin, κ) - λ·relu(d - bound), then project.

    steps per round, rounds of λ ×10 (for samples outside the bound); step_size in √d units
    (default √bound, decaying by 10× over each round). Returns a :class:`PerceptualAttackResult`.
    """
    x, y, metric, bound = _prepare(classifier, x, y, bound_metric, bound, DEFAULT_METRIC)
    steps, rounds = check_steps(steps, rounds)
    geo = _Geometry(metric, h=1e-1)
    eta0 = math.sqrt(bound) if step_size is None else float(step_size)
    lam_t = torch.full((x.shape[0],), float(lam), device=x.device)
    x_adv = _start(x, seed)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    x_found = x.clone()
    last_d = torch.zeros(x.shape[0], device=x.device)
    bar = tqdm(total=steps * rounds, desc="lpa", leave=False, disable=not progress)
    for _ in range(rounds):
        for i in range(steps):
            bar.update(1)
            a = (~found).nonzero().squeeze(1)
            if a.numel() == 0:
                break
            eta = eta0 * 0.1 ** (i / steps)
            xa, xs, ya = x_adv[a].detach().requires_grad_(True), x[a], y[a]
            with torch.enable_grad():
                logits = classifier(xa)
                m = margin(logits, ya)
                d = geo.dist(xs, xa)
                obj = torch.clamp(-m, max=kappa) - lam_t[a] * torch.relu(d - bound)
            if not obj.requires_grad:
                raise InputError("the classifier and bound metric give no gradient with respect to the input")
            (g,) = torch.autograd.grad(obj.sum(), xa)
            g = torch.nan_to_num(g)
            xa = xa.detach()
            last_d[a] = d.detach()
            wrong = (m.detach() < 0) & (d.detach() <= bound)
            x_found[a[wrong]] = xa[wrong]
            found[a[wrong]] = True
            rate = geo.rate(xa, g).clamp_min(1e-6)
            step = g / _bcast(_norm(g) + 1e-12, g) * _bcast(eta / rate, g)
            x_adv[a] = torch.where(_bcast(wrong, xa), xa, (xa + step).clamp(0, 1))
        lam_t = torch.where(last_d >= bound, lam_t * 10, lam_t)
        if bool(found.all()):
            break
    bar.close()
    x_proj = geo.project(x, x_adv, bound)  # unbroken samples: their last iterate, inside the bound
    x_final = torch.where(_bcast(found, x), x_found, x_proj)
    return _finish(classifier, geo, x, y, x_final, bound)


def r_ppga(classifier, x, y=None, bound_metric: Union[None, str, Metric] = None, bound: float = DEFAULT_BOUND,
           **kwargs) -> PerceptualAttackResult:
    """R-PPGA: PPGD bounded by R-LPIPS (default 'rlpips-linf-x0') instead of LPIPS."""
    return ppgd(classifier, x, y, resolve_metric(bound_metric, DEFAULT_R_METRIC), bound, **kwargs)


def r_lpa(classifier, x, y=None, bound_metric: Union[None, str, Metric] = None, bound: float = DEFAULT_BOUND,
          **kwargs) -> PerceptualAttackResult:
    """R-LPA: LPA bounded by R-LPIPS (default 'rlpips-linf-x0') instead of LPIPS."""
    return lpa(classifier, x, y, resolve_metric(bound_metric, DEFAULT_R_METRIC), bound, **kwargs)

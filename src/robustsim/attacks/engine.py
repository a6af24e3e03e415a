"""Pieces shared by every norm-bounded attack: validation, projections, losses, gradient evaluation.

The attacks optimise a perturbation *variable* of shape B×K×C×H×W: K images per sample (1 for a
classifier, 2 when a 2AFC attack perturbs x0 and x1 together). The budget applies to each of the K
images separately (a product of balls), which is what "perturb x0 and x1 with ε each" means in the
R-LPIPS threat model. The objective is told the *original* sample indices of the rows it receives,
so an objective that closes over fixed tensors (x0, x1 of a triplet) slices them consistently when
the attack drops samples that are already broken.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from ..images import check_images

NORMS = ("linf", "l2")
_NORM_ALIASES = {"linf": "linf", "l-inf": "linf", "inf": "linf", "l2": "l2", "2": "l2"}

# objective(z, idx) -> (loss (B,), success (B,) bool or None); z: B×K×C×H×W, idx: original sample indices
Objective = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]
LossSpec = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass
class AttackResult:
    """What a norm-bounded attack found for each sample.

    x_adv: B×K×C×H×W; the first success found, otherwise the highest-loss point (always within budget).
    success: objective's success flag at x_adv (all False when the objective defines none).
    loss: objective value at x_adv.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor


def check_norm(norm: str) -> str:
    key = str(norm).lower().replace("_", "")
    if key not in _NORM_ALIASES:
        raise InputError(f"unknown norm {norm!r}; choose 'linf' or 'l2'")
    return _NORM_ALIASES[key]


def check_metric(metric) -> None:
    """A metric to attack: an nn.Module ``d(x, y) -> (N,)``."""
    if not isinstance(metric, torch.nn.Module) or not callable(metric):
        raise InputError(f"metric must be a robustsim Metric (an nn.Module d(x, y) -> (N,)), got {type(metric).__name__}")


def diameter(norm: str, numel: int) -> float:
    """Largest distance between two images of `numel` values in [0, 1] in this norm."""
    return 1.0 if norm == "linf" else math.sqrt(numel)


def check_eps(eps: float, norm: str, numel: int, name: str = "eps") -> float:
    """ε must be a positive finite number no larger than the diameter of the [0, 1] image cube."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {eps!r}") from None
    if math.isnan(e) or math.isinf(e):
        raise InputError(f"{name} must be finite, got {e}")
    if e <= 0:
        raise InputError(f"{name} must be > 0, got {e}")
    dia = diameter(norm, numel)
    if e > dia * (1 + 1e-6):
        raise InputError(
            f"{name}={e:g} exceeds the {norm} diameter {dia:.4g} of the [0, 1] image cube: every image would be "
            "reachable (budgets are in [0, 1] pixel units, not 0-255)"
        )
    return e


def check_steps(steps: int, restarts: int) -> Tuple[int, int]:
    if int(steps) != steps or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if int(restarts) != restarts or restarts < 1:
        raise InputError(f"restarts must be a positive integer, got {restarts!r}")
    return int(steps), int(restarts)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """B×K×... -> B×K×D (one row per perturbed image)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) or per-image (B, K) values broadcast against a B×K×C×H×W tensor."""
    while v.dim() < like.dim():
        v = v.unsqueeze(-1)
    return v


def project(z: torch.Tensor, center: torch.Tensor, eps: float, norm: str, iters: int = 40) -> torch.Tensor:
    """Euclidean projection of z onto {|z - center| <= eps per image} ∩ [0, 1].

    l-inf: a clamp (exact). l2: the exact projection onto the intersection of the ball and the box,
    not the usual "rescale then clip" (which is feasible but not the nearest point). By the KKT
    conditions the answer is clip(μ·v, lo, hi) for v = z - center and the largest μ ∈ (0, 1] whose
    norm fits; μ is found by bisection, keeping the feasible end.
    """
    if norm == "linf":
        return torch.min(torch.max(z, center - eps), center + eps).clamp(0.0, 1.0)
    v = _flat(z - center)
    lo, hi = _flat(-center), _flat(1.0 - center)
    full = torch.min(torch.max(v, lo), hi)
    norms = full.norm(dim=-1)
    need = norms > eps
    if bool(need.any()):
        mu_lo = torch.zeros_like(norms)
        mu_hi = torch.ones_like(norms)
        for _ in range(iters):
            mu = (mu_lo + mu_hi) / 2
            n = torch.min(torch.max(v * mu.unsqueeze(-1), lo), hi).norm(dim=-1)
            ok = n <= eps
            mu_lo = torch.where(ok, mu, mu_lo)
            mu_hi = torch.where(ok, mu_hi, mu)
        scaled = torch.min(torch.max(v * mu_lo.unsqueeze(-1), lo), hi)
        full = torch.where(need.unsqueeze(-1), scaled, full)
    return (center + full.reshape(z.shape)).clamp(0.0, 1.0)


def ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size per image: sign(g) for l-inf, g/||g|| for l2.

    With one budget per image the steepest direction of the product of balls normalises each image's
    gradient on its own.
    """
    if norm == "linf":
        return g.sign()
    n = _flat(g).norm(dim=-1)
    return g / expand(n + 1e-12, g)


def random_start(center: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A random point of the budget: uniform in the l-inf box, uniform direction at radius ε for l2."""
    if norm == "linf":
        u = torch.rand(center.shape, generator=gen, dtype=center.dtype) * 2 - 1
        d = u * eps
    else:
        u = torch.randn(center.shape, generator=gen, dtype=center.dtype)
        d = u / expand(_flat(u).norm(dim=-1) + 1e-12, u) * eps
    return project(center + d.to(center.device), center, eps, norm)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j≠y} z_j: positive while the label wins."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


def make_loss(loss: LossSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample loss to *maximise* from logits: 'ce', 'margin' (= -margin, the CW loss) or a callable."""
    if callable(loss):
        return loss
    if loss == "ce":
        return lambda z, y: F.cross_entropy(z, y, reduction="none")
    if loss in ("margin", "cw"):
        return lambda z, y: -margin(z, y)
    raise InputError(f"unknown loss {loss!r}; choose 'ce', 'margin' or pass a callable(logits, labels) -> (N,)")


def value_and_grad(objective: Objective, z: torch.Tensor, idx: torch.Tensor, first: bool = False):
    """Loss, success and gradient of the objective at z (rows idx of the batch).

    On the first evaluation, a loss without a gradient (a metric computed under no_grad, detached or
    piecewise constant) is an error rather than a silent zero step.
    """
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        loss, success = objective(z, idx)
    if loss.shape != (z.shape[0],):
        raise InputError(f"the attack loss must have one value per sample, shape ({z.shape[0]},), got {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise InputError(
            "the attacked function gives no gradient with respect to its input (computed under no_grad, "
            "detached, or not differentiable); gradient attacks cannot run on it"
        )
    (g,) = torch.autograd.grad(loss.sum(), z, allow_unused=True)
    if g is None:
        raise InputError("the attacked function does not depend on the perturbed input (gradient is None)")
    loss = loss.detach()
    if first:
        if not bool(torch.isfinite(loss).any()):
            raise InputError("the attack loss is NaN/Inf for every sample at the start")
        if bool((g == 0).all()) and bool((loss != 0).any()):
            raise InputError(
                "the attack loss has an all-zero gradient with respect to the input (a metric without "
                "gradients, e.g. quantised or thresholded?); a gradient attack would not move"
            )
    g = torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, float("-inf")))
    if success is not None:
        success = success.detach().bool()
    return loss, success, g


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A CPU generator (random starts are drawn on CPU and moved, so results match across devices)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def check_budget(norm: str, eps: float, steps: int, restarts: int, center: torch.Tensor, seed: int):
    """The checks and set-up every optimiser entry point starts with, in one place so they cannot drift.

    Returns (norm, eps, steps, restarts, generator), validated in that order of checks: norm, steps and
    restarts, then ε against the diameter of one perturbed image of ``center`` (B×K×C×H×W).
    """
    norm = check_norm(norm)
    steps, restarts = check_steps(steps, restarts)
    eps = check_eps(eps, norm, center[0, 0].numel())
    return norm, eps, steps, restarts, make_generator(seed, center.device)


class RunTracker:
    """Book-keeping shared by the iterative runs (PGD, APGD) on a batch of B rows.

    Evaluates the objective at the start point, then keeps each row's best-loss point and its first
    success; with early stopping (and a success criterion) broken rows leave the active set. After
    construction ``loss`` and ``grad`` hold the first evaluation (the run may update ``grad`` in place).
    """

    def __init__(self, objective: Objective, x: torch.Tensor, early_stop: bool):
        b, dev = x.shape[0], x.device
        self.b, self.device = b, dev
        self.loss, succ, self.grad = value_and_grad(objective, x, torch.arange(b, device=dev), first=True)
        self.has_success = succ is not None
        if not self.has_success:
            succ = torch.zeros(b, dtype=torch.bool, device=dev)
        self.by_success = early_stop and self.has_success
        self.best_loss, self.x_best = self.loss.clone(), x.clone()
        self.found, self.x_found, self.succ_best = succ.clone(), x.clone(), succ.clone()

    def iterations(self, steps: int, desc: str, progress: bool):
        """Yield (i, active mask, active indices) for each step; stops early once no row is active."""
        for i in tqdm(range(steps), desc=desc, leave=False, disable=not progress):
            if self.by_success:
                active = ~self.found
            else:
                active = torch.ones(self.b, dtype=torch.bool, device=self.device)
            a = active.nonzero().squeeze(1)
            if a.numel() == 0:
                return
            yield i, active, a

    def step(self, objective: Objective, x: torch.Tensor, a: torch.Tensor, z: torch.Tensor):
        """Move rows ``a`` of the iterate x to z, evaluate there (``grad`` updated) and record the result.

        Returns (loss, gradient) at z and the mask of rows whose best point improved.
        """
        x[a] = z
        la, sa, ga = value_and_grad(objective, z, a)
        self.grad[a] = ga
        return la, ga, self.record(a, la, sa, z)

    def record(self, a: torch.Tensor, loss: torch.Tensor, success: Optional[torch.Tensor],
               z: torch.Tensor) -> torch.Tensor:
        """Take rows ``a``'s new iterate z with its loss/success; returns the mask of rows whose best improved."""
        better = loss > self.best_loss[a]
        rows = a[better]
        self.best_loss[rows], self.x_best[rows] = loss[better], z[better]
        if self.has_success:
            self.succ_best[rows] = success[better]
            new = success & ~self.found[a]
            self.x_found[a[new]] = z[new]
            self.found[a[new]] = True
        return better

    def result(self) -> AttackResult:
        return finish_run(self.by_success, self.found, self.x_found, self.x_best, self.best_loss, self.succ_best)


def run_restarts(run_once, center: torch.Tensor, restarts: int, early_stop: bool, objective: Objective) -> AttackResult:
    """Call ``run_once(objective_on_subset, center_subset, restart)`` for each restart and merge.

    Later restarts attack only the samples not yet broken (all samples when there is no success
    criterion or early_stop is off); a sample keeps its first success, else its highest loss.
    """
    b = center.shape[0]
    x_out = center.clone()
    loss_out = torch.full((b,), float("-inf"), device=center.device)
    success_out = torch.zeros(b, dtype=torch.bool, device=center.device)
    for r in range(restarts):
        todo = (~success_out).nonzero().squeeze(1) if early_stop else torch.arange(b, device=center.device)
        if todo.numel() == 0:
            break

        def sub_objective(z, idx, _todo=todo):
            return objective(z, _todo[idx])

        res = run_once(sub_objective, center[todo], r)
        if early_stop:
            new_succ = res.success & ~success_out[todo]
            better = (res.loss > loss_out[todo]) & ~success_out[todo] & ~res.success
            take = new_succ | better
        else:
            take = res.loss > loss_out[todo]
        rows = todo[take]
        x_out[rows] = res.x_adv[take]
        loss_out[rows] = res.loss[take]
        success_out[rows] = res.success[take]
    return AttackResult(x_out, success_out, loss_out)


def finish_run(by_success: bool, found, x_found, x_best, best_loss, succ_best) -> AttackResult:
    """A run's answer: with early stopping the first success (loss +inf marks it), else the best-loss point."""
    if not by_success:
        return AttackResult(x_best, succ_best, best_loss)
    out = torch.where(expand(found, x_best), x_found, x_best)
    return AttackResult(out, found, torch.where(found, torch.full_like(best_loss, float("inf")), best_loss))


class ClassifierObjective:
    """Loss of a classifier on perturbed images, with success = the label no longer wins."""

    def __init__(self, model: torch.nn.Module, y: torch.Tensor, loss: LossSpec = "ce"):
        self.model = model
        self.y = y
        self.loss_fn = make_loss(loss)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z[:, 0])

    def __call__(self, z: torch.Tensor, idx: torch.Tensor):
        logits = self.logits(z)
        y = self.y[idx]
        return self.loss_fn(logits, y), margin(logits.detach(), y) < 0


def check_any_images(x: torch.Tensor) -> torch.Tensor:
    """Classifiers may take any channel count (MNIST); still require a float batch in [0, 1]."""
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3:
        return check_images(x, "x")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise InputError("x: expected a float batch N×C×H×W in [0, 1]")
    if not bool(torch.isfinite(x).all()) or float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise InputError("x: values must be finite and lie in [0, 1]")
    return x


def attack_classifier(maximize_fn, classifier: torch.nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                      norm: str = "linf", eps: float = 8 / 255, steps: int = 100, restarts: int = 1, seed: int = 0,
                      loss: LossSpec = "ce", return_result: bool = False, progress: bool = False, **kwargs):
    """Shared front end of the classifier attacks: validate x and y, run ``maximize_fn`` on the
    classifier objective over x as N×1×C×H×W, return the AttackResult or x_adv (N×C×H×W).
    ``kwargs`` are the optimiser's own options (PGD's step size and schedule)."""
    x = check_any_images(x)
    y = check_labels(classifier, x, y)
    res = maximize_fn(ClassifierObjective(classifier, y, loss), x[:, None], eps=eps, norm=norm, steps=steps,
                      restarts=restarts, seed=seed, early_stop=True, progress=progress, **kwargs)
    return res if return_result else res.x_adv[:, 0]


def check_labels(model: torch.nn.Module, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """Labels for a classifier attack: given ones validated, None -> the clean predictions."""
    with torch.no_grad():
        logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise InputError(f"the classifier must return logits of shape (N, classes), got {tuple(logits.shape)}")
    if y is None:
        return logits.argmax(1)
    y = torch.as_tensor(y, device=x.device)
    if y.shape != (x.shape[0],):
        raise InputError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise InputError("labels must be integers")
    y = y.long()
    if bool((y < 0).any()) or bool((y >= logits.shape[1]).any()):
        raise InputError(f"labels must lie in [0, {logits.shape[1] - 1}]")
    return y

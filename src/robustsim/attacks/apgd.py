"""APGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that adapts itself.

The algorithm, as the paper states it:

* starting step η = 2ε; momentum α = 0.75 (no momentum on the first step):
  z = P(x_k + η·dir(∇f(x_k))),  x_{k+1} = P(x_k + α(z - x_k) + (1 - α)(x_k - x_{k-1}));
* checkpoints w_j = ⌈p_j·N⌉ with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06);
* at each checkpoint the step is halved, and the iterate restarted from the best point so far, if
  (1) the loss increased in fewer than ρ = 0.75 of the steps since the last checkpoint, or
  (2) the step was not halved at the last checkpoint and the best loss has not improved since;
* the best-loss point is tracked throughout.

Here the attack is batched over samples with per-sample step sizes, and samples whose success
criterion is met (a classifier's label lost, a 2AFC decision flipped) leave the batch at once, so
compute goes to the samples that are still unbroken. The perturbed variable is B×K×C×H×W (see
:mod:`.engine`); the objective receives the original sample indices of the rows it gets.
(Differences from AutoAttack's code, which follows the same paper: condition (2) is also checked at
the first checkpoint as the paper writes it; the l2 projection is the exact projection onto ball ∩ box;
momentum is reset after a restart from the best point.)
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from .engine import (
    AttackResult,
    LossSpec,
    Objective,
    RunTracker,
    ascent_direction,
    attack_classifier,
    check_budget,
    project,
    random_start,
    run_restarts,
    expand,
)

RHO = 0.75
MOMENTUM = 0.75


def checkpoints(steps: int) -> List[int]:
    """Iterations w_1 < w_2 < ... < N at which the step size is reconsidered."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = sorted({math.ceil(q * steps - 1e-9) for q in p[1:] if math.ceil(q * steps - 1e-9) <= steps})
    return [c for c in w if c > 0]


def apgd_run(
    objective: Objective,
    center: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    gen: torch.Generator,
    early_stop: bool = True,
    rho: float = RHO,
    x_init: Optional[torch.Tensor] = None,
    progress: bool = False,
    trace: Optional[list] = None,
) -> AttackResult:
    """One APGD run from a random start (or x_init) on every row of ``center`` (B×K×C×H×W).

    trace: a list that receives, at each checkpoint, (iteration, step sizes, halved mask).
    """
    b = center.shape[0]
    dev = center.device
    x = random_start(center, eps, norm, gen) if x_init is None else project(x_init, center, eps, norm)
    t = RunTracker(objective, x, early_stop)
    grad = t.grad
    grad_best = grad.clone()
    last_loss = t.loss.clone()
    x_prev = x.clone()
    step = torch.full((b,), 2.0 * eps, device=dev)
    n_incr = torch.zeros(b, device=dev)
    reduced_last = torch.zeros(b, dtype=torch.bool, device=dev)
    best_at_last = t.best_loss.clone()
    ckpts = checkpoints(steps)
    prev_ckpt = 0

    for i, active, a in t.iterations(steps, "apgd", progress):
        xa = x[a]
        z = project(xa + expand(step[a], xa) * ascent_direction(grad[a], norm), center[a], eps, norm)
        if i > 0:
            z = project(xa + MOMENTUM * (z - xa) + (1 - MOMENTUM) * (xa - x_prev[a]), center[a], eps, norm)
        x_prev[a] = xa
        la, ga, better = t.step(objective, x, a, z)
        n_incr[a] += (la > last_loss[a]).float()
        last_loss[a] = la
        grad_best[a[better]] = ga[better]

        if i + 1 in ckpts:
            span = i + 1 - prev_ckpt
            prev_ckpt = i + 1
            cond1 = n_incr < rho * span
            cond2 = ~reduced_last & (t.best_loss <= best_at_last)
            reduce = (cond1 | cond2) & active
            r = reduce.nonzero().squeeze(1)
            step[r] /= 2
            x[r] = t.x_best[r]
            x_prev[r] = t.x_best[r]
            grad[r] = grad_best[r]
            last_loss[r] = t.best_loss[r]
            reduced_last = torch.where(active, reduce, reduced_last)
            best_at_last = torch.where(active, t.best_loss, best_at_last)
            n_incr = torch.where(active, torch.zeros_like(n_incr), n_incr)
            if trace is not None:
                trace.append((i + 1, step.clone(), reduce.clone()))

    return t.result()


def apgd_maximize(
    objective: Objective,
    center: torch.Tensor,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    early_stop: bool = True,
    progress: bool = False,
) -> AttackResult:
    """APGD on any objective over a B×K×C×H×W variable (the engine behind every APGD entry point)."""
    norm, eps, steps, restarts, gen = check_budget(norm, eps, steps, restarts, center, seed)

    def once(obj, c, r):
        return apgd_run(obj, c, eps, norm, steps, gen, early_stop=early_stop, progress=progress)

    return run_restarts(once, center.detach(), restarts, early_stop, objective)


def apgd(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    norm: str = "linf",
    eps: float = 8 / 255,
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    loss: LossSpec = "ce",
    return_result: bool = False,
    progress: bool = False,
):
    """APGD-CE (or another loss) against any nn.Module returning logits; returns x_adv (N×C×H×W).

    y: labels (None: the clean predictions). Samples misclassified at any iterate keep that iterate;
    the others get their highest-loss point. ``return_result=True`` gives an :class:`AttackResult`
    (x_adv as N×1×C×H×W, success, loss) instead. The model is used as given (put it in eval mode).
    """
    return attack_classifier(apgd_maximize, classifier, x, y, norm, eps, steps, restarts, seed, loss, return_result,
                             progress)

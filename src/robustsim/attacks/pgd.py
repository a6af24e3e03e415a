"""Projected gradient ascent (Madry et al. 2018) in l-inf or l2, with random start and restarts.

Each step moves by ``step_size`` along the steepest-ascent direction of the norm (sign of the
gradient, or the l2-normalised gradient per image), then projects onto the budget ∩ [0, 1]. The
step size is constant (default 2.5·ε/steps, so the iterate can cross the ball) or follows a cosine
decay to 0 (``schedule="cosine"``). The best-loss iterate is kept; samples that meet the success
criterion leave the batch at once.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from tqdm.auto import tqdm

from ._common import (
    AttackResult,
    ClassifierObjective,
    LossSpec,
    Objective,
    ascent_direction,
    check_eps,
    check_labels,
    check_norm,
    check_steps,
    finish_run,
    make_generator,
    project,
    random_start,
    run_restarts,
    value_and_grad,
)
from ..errors import InputError

SCHEDULES = ("constant", "cosine")


def pgd_run(
    objective: Objective,
    center: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    gen: torch.Generator,
    step_size: Optional[float] = None,
    schedule: str = "constant",
    random_init: bool = True,
    early_stop: bool = True,
    progress: bool = False,
) -> AttackResult:
    """One PGD run over every row of ``center`` (B×K×C×H×W)."""
    b = center.shape[0]
    dev = center.device
    alpha0 = 2.5 * eps / steps if step_size is None else float(step_size)
    x = random_start(center, eps, norm, gen) if random_init else center.clone()
    allidx = torch.arange(b, device=dev)
    loss, succ, grad = value_and_grad(objective, x, allidx, first=True)
    has_success = succ is not None
    if not has_success:
        succ = torch.zeros(b, dtype=torch.bool, device=dev)
    best_loss, x_best = loss.clone(), x.clone()
    found, x_found, succ_best = succ.clone(), x.clone(), succ.clone()
    for i in tqdm(range(steps), desc="pgd", leave=False, disable=not progress):
        active = ~found if (early_stop and has_success) else torch.ones(b, dtype=torch.bool, device=dev)
        a = active.nonzero().squeeze(1)
        if a.numel() == 0:
            break
        alpha = alpha0 if schedule == "constant" else alpha0 * 0.5 * (1 + math.cos(math.pi * i / steps))
        z = project(x[a] + alpha * ascent_direction(grad[a], norm), center[a], eps, norm)
        x[a] = z
        la, sa, ga = value_and_grad(objective, z, a)
        grad[a] = ga
        better = la > best_loss[a]
        best_loss[a[better]], x_best[a[better]] = la[better], z[better]
        if has_success:
            succ_best[a[better]] = sa[better]
        if has_success:
            new = sa & ~found[a]
            x_found[a[new]] = z[new]
            found[a[new]] = True
    return finish_run(early_stop and has_success, found, x_found, x_best, best_loss, succ_best)


def pgd_maximize(
    objective: Objective,
    center: torch.Tensor,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    step_size: Optional[float] = None,
    schedule: str = "constant",
    early_stop: bool = True,
    progress: bool = False,
) -> AttackResult:
    """PGD on any objective over a B×K×C×H×W variable."""
    norm = check_norm(norm)
    steps, restarts = check_steps(steps, restarts)
    eps = check_eps(eps, norm, center[0, 0].numel())
    if schedule not in SCHEDULES:
        raise InputError(f"unknown step schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if step_size is not None and not (float(step_size) > 0 and math.isfinite(float(step_size))):
        raise InputError(f"step_size must be a positive number, got {step_size!r}")
    gen = make_generator(seed, center.device)

    def once(obj, c, r):
        return pgd_run(obj, c, eps, norm, steps, gen, step_size, schedule, early_stop=early_stop, progress=progress)

    return run_restarts(once, center.detach(), restarts, early_stop, objective)


def pgd(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    norm: str = "linf",
    eps: float = 8 / 255,
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    loss: LossSpec = "ce",
    step_size: Optional[float] = None,
    schedule: str = "constant",
    return_result: bool = False,
    progress: bool = False,
):
    """PGD against any nn.Module returning logits; returns x_adv (N×C×H×W). See :func:`apgd`."""
    from .apgd import _check_any_images

    x = _check_any_images(x)
    y = check_labels(classifier, x, y)
    res = pgd_maximize(ClassifierObjective(classifier, y, loss), x[:, None], eps, norm, steps, restarts, seed,
                       step_size, schedule, early_stop=True, progress=progress)
    return res if return_result else res.x_adv[:, 0]

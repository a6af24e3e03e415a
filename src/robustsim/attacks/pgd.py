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

from .engine import (
    AttackResult,
    Objective,
    RunTracker,
    ascent_direction,
    attack_classifier,
    check_budget,
    project,
    random_start,
    run_restarts,
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
    alpha0 = 2.5 * eps / steps if step_size is None else float(step_size)
    x = random_start(center, eps, norm, gen) if random_init else center.clone()
    t = RunTracker(objective, x, early_stop)
    grad = t.grad
    for i, _, a in t.iterations(steps, "pgd", progress):
        alpha = alpha0 if schedule == "constant" else alpha0 * 0.5 * (1 + math.cos(math.pi * i / steps))
        z = project(x[a] + alpha * ascent_direction(grad[a], norm), center[a], eps, norm)
        t.step(objective, x, a, z)
    return t.result()


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
    norm, eps, steps, restarts, gen = check_budget(norm, eps, steps, restarts, center, seed)
    if schedule not in SCHEDULES:
        raise InputError(f"unknown step schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if step_size is not None and not (float(step_size) > 0 and math.isfinite(float(step_size))):
        raise InputError(f"step_size must be a positive number, got {step_size!r}")

    def once(obj, c, r):
        return pgd_run(obj, c, eps, norm, steps, gen, step_size, schedule, early_stop=early_stop, progress=progress)

    return run_restarts(once, center.detach(), restarts, early_stop, objective)


def pgd(classifier: torch.nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None,
        step_size: Optional[float] = None, schedule: str = "constant", **options):
    """PGD against any nn.Module returning logits; returns x_adv (N×C×H×W).

    The other options (norm, eps, steps, restarts, seed, loss, return_result, progress) and their
    defaults are :func:`~robustsim.attacks.apgd.apgd`'s.
    """
    return attack_classifier(pgd_maximize, classifier, x, y, step_size=step_size, schedule=schedule, **options)

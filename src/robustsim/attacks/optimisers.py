"""Registry of the attack optimisers: ``name -> maximise function``, modelled on :mod:`robustsim.hub`.

An optimiser maximises an :data:`~robustsim.attacks.engine.Objective` over a norm ball ∩ [0, 1]:
``fn(objective, center, eps, norm, steps, restarts, seed, early_stop, progress) -> AttackResult``.
Every threat model (2AFC, pair, embedding), the ``robustsim attack`` / ``robustsim eval --attack``
choices and the service resolve method names here, so a new optimiser is one new module plus one
:func:`register` line below (see CONTRIBUTING.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

import torch

from ..errors import InputError
from .apgd import apgd_maximize
from .engine import AttackResult, Objective
from .pgd import pgd_maximize

Maximize = Callable[..., AttackResult]


@dataclass(frozen=True)
class OptimiserSpec:
    name: str
    maximize: Maximize
    description: str = ""


_OPTIMISERS: Dict[str, OptimiserSpec] = {}


def register(spec: OptimiserSpec, overwrite: bool = False) -> None:
    key = spec.name.lower()
    if key in _OPTIMISERS and not overwrite:
        raise ValueError(f"attack optimiser {spec.name!r} is already registered")
    _OPTIMISERS[key] = spec


def list_optimisers() -> List[str]:
    """Registered method names, in registration order (the CLI's ``--method``/``--attack`` choices)."""
    return list(_OPTIMISERS)


def check_method(method: str) -> str:
    key = str(method).lower()
    if key not in _OPTIMISERS:
        raise InputError(f"unknown attack method {method!r}; choose one of {', '.join(_OPTIMISERS)}")
    return key


def maximize(method: str, objective: Objective, center: torch.Tensor, eps: float, norm: str, steps: int,
             restarts: int, seed: int, early_stop: bool = True, progress: bool = False) -> AttackResult:
    """Run the registered optimiser ``method`` on ``objective`` (the loss is the objective's own)."""
    fn = _OPTIMISERS[check_method(method)].maximize
    return fn(objective, center, eps, norm, steps, restarts, seed, early_stop=early_stop, progress=progress)


register(OptimiserSpec("apgd-ce", apgd_maximize, "APGD (Croce & Hein 2020) on the objective's loss"))
register(OptimiserSpec("apgd", apgd_maximize, "the same optimiser as apgd-ce"))
register(OptimiserSpec("pgd", pgd_maximize, "projected gradient ascent with random start (Madry et al. 2018)"))

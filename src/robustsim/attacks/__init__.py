"""Attacks on perceptual metrics and on classifiers.

* 2AFC and pair threat models on any metric: :func:`attack_2afc`, :func:`attack_pair` (and
  ``run_2afc`` / ``run_pair`` for the full result with distances and decisions);
* norm-bounded attacks on any classifier returning logits: :func:`apgd` (APGD-CE, Croce & Hein 2020),
  :func:`pgd`;
* the embedding attack of LipSim: :func:`embedding_attack`;
* perceptual attacks on classifiers (Laidlaw et al. 2021): :func:`ppgd`, :func:`lpa`, and with an
  R-LPIPS bound :func:`r_ppga`, :func:`r_lpa`.

Budgets are in [0, 1] pixel units per perturbed image.
"""
from .engine import AttackResult
from .apgd import apgd, apgd_maximize, checkpoints
from .embedding import embedding_attack
from .optimisers import OptimiserSpec, list_optimisers, register
from .perceptual import PerceptualAttackResult, lpa, ppgd, r_lpa, r_ppga
from .pgd import pgd, pgd_maximize
from .twoafc import (
    PairAttackResult,
    TwoAFCAttackResult,
    TwoAFCThreat,
    PairThreat,
    attack_2afc,
    attack_pair,
    run_2afc,
    run_pair,
)

__all__ = [
    "attack_2afc", "run_2afc", "attack_pair", "run_pair", "TwoAFCThreat", "PairThreat", "TwoAFCAttackResult",
    "PairAttackResult", "apgd", "pgd", "apgd_maximize", "pgd_maximize", "checkpoints", "AttackResult",
    "embedding_attack", "list_optimisers", "register", "OptimiserSpec", "ppgd", "lpa", "r_ppga", "r_lpa", "PerceptualAttackResult",
]

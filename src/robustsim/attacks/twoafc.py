"""Threat models on a perceptual metric: the 2AFC decision and a single distance.

2AFC: a triplet (ref, x0, x1) is a 2-class problem with logits (-d(ref, x0), -d(ref, x1)); label 0
means x0 is the closer. The adversary perturbs the reference (LipSim, Croce et al.), x0, x1, or x0
and x1 together (R-LPIPS) within an l2 or l-inf budget in [0, 1] pixel units, maximising the
cross-entropy (or margin, or any loss of the two logits); a sample is broken when the decision flips.
With ``target="x0+x1"`` the perturbation variable holds both images and **each** of them gets the
full budget ε (a product of two balls, not one ball over the concatenation).

The attack takes the whole triplet: its objective slices the fixed images with the same sample
indices as the perturbed ones, so dropping already-flipped samples never mispairs a triplet (the
failure mode of wrapping a metric for AutoAttack, which slices batches internally).

Pair: push d(x + δ, y) up or down (perturbing x, y or both); with a threshold τ a sample is broken
once d crosses τ (near-duplicate / copy detection).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..errors import InputError
from ..images import check_images
from ..metrics.base import Metric
from .engine import LossSpec, check_eps, check_metric, check_norm, check_steps, make_loss, margin
from .optimisers import check_method, maximize

TARGETS = ("ref", "x0", "x1", "x0+x1")
_SLOTS = {"ref": (0,), "x0": (1,), "x1": (2,), "x0+x1": (1, 2)}
PAIR_TARGETS = ("x", "y", "both")
DIRECTIONS = ("up", "down")


def check_target(target: str, allowed=TARGETS) -> str:
    if target not in allowed:
        raise InputError(f"unknown attack target {target!r}; choose one of {', '.join(allowed)}")
    return target


def _same_shapes(**tensors) -> None:
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.shape != t0.shape:
            raise InputError(f"shape mismatch: {name0} is {tuple(t0.shape)} but {name} is {tuple(t.shape)}")


def metric_distance(metric, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a, b) of in-range, equally shaped batches: skip re-validation for robustsim metrics."""
    return metric.distance(a, b) if isinstance(metric, Metric) else metric(a, b)


def _fast_embed(metric):
    """The metric's embedding function when d is exactly ||e(x) - e(y)||²/2 (fixed images embed once)."""
    from ..metrics.embedding import EmbeddingMetric

    if isinstance(metric, EmbeddingMetric) and type(metric).distance is EmbeddingMetric.distance:
        return metric.embed_checked
    return None


def check_label(label, n: int, device) -> torch.Tensor:
    """2AFC labels: integers (or bools/floats equal to) 0 or 1, one per triplet."""
    lab = torch.as_tensor(label, device=device)
    if lab.dim() == 0:
        lab = lab.expand(n)
    if lab.shape != (n,):
        raise InputError(f"label must have shape ({n},), got {tuple(lab.shape)}")
    if lab.is_floating_point() and not bool(torch.isfinite(lab).all()):
        raise InputError("label contains NaN or Inf")
    if not bool(((lab == 0) | (lab == 1)).all()):
        raise InputError("label must be 0 (x0 is closer) or 1 (x1 is closer); got other values")
    return lab.long()


def _check_run(norm: str, method: str, steps: int, restarts: int, target: Optional[str] = None):
    """The option checks every threat-model attack starts with (target: a 2AFC target to check too)."""
    norm = check_norm(norm)
    method = check_method(method)
    if target is not None:
        target = check_target(target)
    steps, restarts = check_steps(steps, restarts)
    return norm, method, target, steps, restarts


class _SlotThreat:
    """A threat model over fixed images ``self.images`` (B×S×C×H×W) of which ``self.slots`` are perturbed."""

    images: torch.Tensor
    slots: Tuple[int, ...]

    def center(self) -> torch.Tensor:
        return self.images[:, list(self.slots)]

    def assemble(self, z: torch.Tensor, idx: torch.Tensor):
        """The S images of rows idx, the perturbed slots taken from z."""
        imgs = [self.images[idx, k] for k in range(self.images.shape[1])]
        for j, k in enumerate(self.slots):
            imgs[k] = z[:, j]
        return imgs

    def attack(self, method: str, eps: float, norm: str, steps: int, restarts: int, seed: int, early_stop: bool,
               progress: bool):
        """Run the optimiser on this objective; the S images of every row with the answer in place (detached)."""
        eps = check_eps(eps, norm, self.images[0, 0].numel())
        res = maximize(method, self, self.center(), eps, norm, steps, restarts, seed, early_stop, progress)
        idx = torch.arange(res.x_adv.shape[0], device=res.x_adv.device)
        return [t.detach() for t in self.assemble(res.x_adv, idx)]


class TwoAFCThreat(_SlotThreat):
    """A metric and a batch of triplets as a 2-logit objective over the perturbed image(s).

    Call it as ``objective(z, idx)`` with z of shape B×K×3×H×W (K = 1, or 2 for "x0+x1") and idx the
    original triplet indices of those rows; returns (loss, flipped).
    """

    def __init__(self, metric: Metric, ref, x0, x1, label=None, target: str = "ref", loss: LossSpec = "ce"):
        check_metric(metric)
        self.metric = metric
        self.target = check_target(target)
        ref = check_images(ref, "ref")
        x0 = check_images(x0, "x0")
        x1 = check_images(x1, "x1")
        _same_shapes(ref=ref, x0=x0, x1=x1)
        self.images = torch.stack([ref, x0, x1], 1).detach()  # B×3×C×H×W
        self.slots = _SLOTS[self.target]
        self.loss_fn = make_loss(loss)
        self._embed = _fast_embed(metric)
        self._fixed_emb = None
        with torch.no_grad():
            d0, d1 = self.distances(ref, x0, x1)
        self.clean_d0, self.clean_d1 = d0, d1
        self.clean_decision = (d1 < d0).long()
        self.label = self.clean_decision.clone() if label is None else check_label(label, ref.shape[0], ref.device)

    def distances(self, ref, x0, x1) -> Tuple[torch.Tensor, torch.Tensor]:
        """d(ref, x0), d(ref, x1) through the public metric call (validated inputs)."""
        n = ref.shape[0]
        d = self.metric(torch.cat([ref, ref]), torch.cat([x0, x1]))
        return d[:n], d[n:]

    def logits(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        r, a, b = self.assemble(z, idx)
        if self._embed is not None:
            d0, d1 = self._embedding_distances(z, idx, r, a, b)
        else:
            n = r.shape[0]
            d = metric_distance(self.metric, torch.cat([r, r]), torch.cat([a, b]))
            d0, d1 = d[:n], d[n:]
        return torch.stack([-d0, -d1], 1)

    def _embedding_distances(self, z, idx, r, a, b):
        if self._fixed_emb is None:
            with torch.no_grad():
                b_, k_ = self.images.shape[:2]
                flat = self.images.reshape(b_ * k_, *self.images.shape[2:])
                self._fixed_emb = self._embed(flat).reshape(b_, k_, -1)
        emb = [self._fixed_emb[idx, k] for k in range(3)]
        pert = self._embed(z.reshape(-1, *z.shape[2:])).reshape(z.shape[0], z.shape[1], -1)
        for j, k in enumerate(self.slots):
            emb[k] = pert[:, j]
        return (emb[0] - emb[1]).pow(2).sum(1) / 2, (emb[0] - emb[2]).pow(2).sum(1) / 2

    def __call__(self, z: torch.Tensor, idx: torch.Tensor):
        logits = self.logits(z, idx)
        y = self.label[idx]
        return self.loss_fn(logits, y), margin(logits.detach(), y) < 0


@dataclass
class TwoAFCAttackResult:
    """Adversarial triplets and what they did to the decision."""

    ref: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    label: torch.Tensor
    clean_d0: torch.Tensor
    clean_d1: torch.Tensor
    adv_d0: torch.Tensor
    adv_d1: torch.Tensor
    flipped: torch.Tensor  # the adversarial decision disagrees with the label

    @property
    def adv_decision(self) -> torch.Tensor:
        return (self.adv_d1 < self.adv_d0).long()


def run_2afc(
    metric: Metric,
    ref: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    label=None,
    norm: str = "l2",
    eps: float = 1.0,
    method: str = "apgd-ce",
    target: str = "ref",
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    loss: LossSpec = "ce",
    early_stop: bool = True,
    progress: bool = False,
) -> TwoAFCAttackResult:
    """Attack 2AFC decisions; the full result (:func:`attack_2afc` returns only the images).

    label: per triplet, 0 if x0 is the closer (None: the metric's clean decisions, i.e. attack agreement
    with itself). norm 'l2' | 'linf', eps in [0, 1] pixel units per perturbed image. method: a name
    from :func:`robustsim.attacks.list_optimisers` ('apgd-ce' = APGD, Croce & Hein 2020; 'pgd').
    target 'ref' | 'x0' | 'x1' | 'x0+x1'. loss 'ce' | 'margin' | callable(logits (N, 2), label) -> (N,)
    to maximise. ``early_stop=False`` keeps optimising flipped triplets too (to maximise the loss, e.g.
    to probe a certificate's margin), returning the highest-loss point for every triplet.
    """
    norm, method, target, steps, restarts = _check_run(norm, method, steps, restarts, target)
    make_loss(loss)
    threat = TwoAFCThreat(metric, ref, x0, x1, label, target, loss)
    r, a, b = threat.attack(method, eps, norm, steps, restarts, seed, early_stop, progress)
    with torch.no_grad():
        d0, d1 = threat.distances(r, a, b)
    flipped = (torch.where(threat.label == 0, d1 < d0, d0 < d1))
    return TwoAFCAttackResult(r, a, b, threat.label, threat.clean_d0, threat.clean_d1, d0, d1, flipped)


def attack_2afc(metric: Metric, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, label=None,
                **options) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perturb triplets to flip the metric's 2AFC decisions; returns (ref', x0', x1').

    The options are :func:`run_2afc`'s. Unperturbed images are returned unchanged; perturbed ones are
    the first flip found, else the highest-loss point.
    """
    res = run_2afc(metric, ref, x0, x1, label, **options)
    return res.ref, res.x0, res.x1


class PairThreat(_SlotThreat):
    """d(x', y') pushed up or down; success (with a threshold τ) once d crosses τ."""

    def __init__(self, metric: Metric, x, y, direction: str = "up", target: str = "x",
                 threshold: Optional[float] = None):
        check_metric(metric)
        if direction not in DIRECTIONS:
            raise InputError(f"unknown direction {direction!r}; choose 'up' or 'down'")
        self.metric = metric
        self.direction = direction
        self.target = check_target(target, PAIR_TARGETS)
        x = check_images(x, "x")
        y = check_images(y, "y")
        _same_shapes(x=x, y=y)
        if threshold is not None:
            threshold = float(threshold)
            if threshold != threshold:
                raise InputError("threshold is NaN")
        self.threshold = threshold
        self.images = torch.stack([x, y], 1).detach()
        self.slots = {"x": (0,), "y": (1,), "both": (0, 1)}[self.target]
        with torch.no_grad():
            self.clean_d = metric(x, y)

    def __call__(self, z, idx):
        a, b = self.assemble(z, idx)
        d = metric_distance(self.metric, a, b)
        loss = d if self.direction == "up" else -d
        if self.threshold is None:
            return loss, None
        dd = d.detach()
        return loss, (dd > self.threshold) if self.direction == "up" else (dd < self.threshold)


@dataclass
class PairAttackResult:
    x: torch.Tensor
    y: torch.Tensor
    clean_d: torch.Tensor
    adv_d: torch.Tensor
    success: Optional[torch.Tensor]  # None without a threshold


def run_pair(metric: Metric, x, y, direction: str = "up", target: str = "x", norm: str = "l2", eps: float = 1.0,
             method: str = "apgd", steps: int = 100, restarts: int = 1, seed: int = 0,
             threshold: Optional[float] = None, progress: bool = False) -> PairAttackResult:
    """Push d(x, y) up or down within the budget; the full result (see :func:`attack_pair`)."""
    norm, method, _, steps, restarts = _check_run(norm, method, steps, restarts)
    threat = PairThreat(metric, x, y, direction, target, threshold)
    a, b = threat.attack(method, eps, norm, steps, restarts, seed, True, progress)
    with torch.no_grad():
        d = metric(a, b)
    succ = None
    if threshold is not None:
        succ = d > threshold if direction == "up" else d < threshold
    return PairAttackResult(a, b, threat.clean_d, d, succ)


def attack_pair(metric: Metric, x, y, direction: str = "up", target: str = "x", norm: str = "l2",
                eps: float = 1.0, method: str = "apgd", steps: int = 100, restarts: int = 1, seed: int = 0,
                threshold: Optional[float] = None, progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Perturb x (or y, or both: ε each) to push d(x, y) up ('up') or down ('down'); returns (x', y').

    Without a threshold every sample is optimised for all steps (highest/lowest distance returned);
    with one, a sample stops once d crosses it (copy-detection evasion / forgery).
    """
    res = run_pair(metric, x, y, direction, target, norm, eps, method, steps, restarts, seed, threshold, progress)
    return res.x, res.y

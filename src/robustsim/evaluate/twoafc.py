"""2AFC evaluation: BAPPS score / NIGHTS accuracy, natural, attacked (any 2AFC threat model), certified.

Score of a triplet with human judgment j (fraction preferring x1) and distances d0 = d(ref, x0),
d1 = d(ref, x1):  ``(d0 < d1)(1 - j) + (d1 < d0) j + 0.5 (d0 = d1)``  (BAPPS; with j in {0, 1} it is
NIGHTS' accuracy against the majority). Reported overall and per group (BAPPS category, NIGHTS
ImageNet / non-ImageNet, distortion kind of the offline suites).

Certified evaluation (certified metrics only) takes the distances *and* the radii from one call of
:func:`robustsim.certify.two_afc` (one forward pass per image, in float64 for the proven rounding
bound, so about 4× the natural evaluation's cost on CPU; docs/BENCHMARKS.md):
a triplet counts at budget ε when its decision scores and its radius exceeds ε
(``radius > ε``, :meth:`TwoAFCCertificate.certified`). With soft BAPPS judgments the certified
score at ε is the mean of ``score · 1[radius > ε]``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..errors import InputError
from .runner import BatchStore, metric_fingerprint, run_batches

#: the LipSim paper's certified budgets (l2, [0, 1] pixel units)
PAPER_CERT_EPS = (36 / 255, 72 / 255, 108 / 255)


def twoafc_scores(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """Per-triplet 2AFC score (BAPPS formula); mean it for the dataset score."""
    d0, d1, j = (torch.as_tensor(t, dtype=torch.float64) for t in (d0, d1, judge))
    if not (d0.shape == d1.shape == j.shape):
        raise InputError(f"d0, d1 and judge must have the same shape, got {tuple(d0.shape)}, {tuple(d1.shape)}, {tuple(j.shape)}")
    return (d0 < d1).double() * (1 - j) + (d1 < d0).double() * j + 0.5 * (d0 == d1).double()


def grouped(values: torch.Tensor, groups: Sequence[str]) -> Dict[str, Any]:
    """{"overall": mean, "n": count, "groups": {g: mean}} of per-item values."""
    v = values.double()
    out: Dict[str, Any] = {"overall": float(v.mean()), "n": int(v.numel()), "groups": {}}
    names = sorted(set(groups), key=list(groups).index)
    if len(names) > 1:
        for g in names:
            m = torch.tensor([x == g for x in groups])
            out["groups"][g] = float(v[m].mean())
    return out


@dataclass
class AttackSpec:
    """A 2AFC threat model of :func:`robustsim.attacks.run_2afc`, evaluated at every budget in ``eps``."""

    method: str = "apgd-ce"
    norm: str = "l2"
    eps: Sequence[float] = (0.5, 1.0, 2.0, 3.0)
    target: str = "ref"
    steps: int = 100
    restarts: int = 1
    seed: int = 0

    def __post_init__(self):
        self.eps = [float(e) for e in self.eps]
        if not self.eps:
            raise InputError("attack needs at least one budget (--eps)")
        if any(not e > 0 for e in self.eps):
            raise InputError(f"attack budgets must be positive, got {self.eps}")

    @property
    def label(self) -> str:
        return f"{self.method} {self.norm} {self.target}"


def _is_plain_embedding(metric) -> bool:
    from ..metrics.embedding import EmbeddingMetric

    return isinstance(metric, EmbeddingMetric) and type(metric).distance is EmbeddingMetric.distance


def triplet_distances(metric, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
    """(d(ref, x0), d(ref, x1)) with one forward pass per image (embedding metrics embed each image once)."""
    n = ref.shape[0]
    with torch.no_grad():
        if _is_plain_embedding(metric):
            from ..metrics.embedding import cosine_distance_from_unit

            e = metric.embed(torch.cat([ref, x0, x1]))
            return cosine_distance_from_unit(e[:n], e[n:2 * n]), cosine_distance_from_unit(e[:n], e[2 * n:])
        d = metric(torch.cat([ref, ref]), torch.cat([x0, x1]))
        return d[:n], d[n:]


def _device_of(metric, device):
    if device is not None:
        return torch.device(device)
    p = next(iter(metric.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def evaluate_2afc(
    metric,
    dataset,
    batch_size: int = 32,
    device: Optional[Union[str, torch.device]] = None,
    attack: Optional[AttackSpec] = None,
    certified: bool = False,
    cert_eps: Sequence[float] = PAPER_CERT_EPS,
    run_dir=None,
    limit: Optional[int] = None,
    on_corrupt: str = "skip",
    progress: bool = True,
    config: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Natural (and optionally attacked / certified) 2AFC evaluation of ``metric`` on a triplet dataset.

    Returns a JSON-able dict: ``natural``, ``attacked`` {eps: ...}, ``certified`` (curve and the values at
    ``cert_eps``), each as {"overall", "n", "groups"}; ``skipped`` lists unreadable items.
    ``run_dir`` makes the run resumable (see :mod:`.runner`); ``config`` is extra identification for it.
    """
    if certified and not getattr(metric, "certified", False):
        name = getattr(metric, "name", "") or type(metric).__name__
        raise InputError(f"{name} is not a certified (Lipschitz) metric; --certified needs e.g. a LipSim model")
    dev = _device_of(metric, device)
    metric = metric.to(dev).eval()
    n_total = len(dataset) if limit is None else min(len(dataset), int(limit))
    if n_total <= 0:
        raise InputError("empty selection: the dataset has no triplets (or --limit 0)")
    ident = {"protocol": "2afc", "metric": getattr(metric, "name", "") or type(metric).__name__, "n": n_total,
             "batch_size": int(batch_size), "certified": bool(certified),
             "weights": metric_fingerprint(metric) if run_dir is not None else None,
             "attack": None if attack is None else asdict(attack), **(config or {})}
    store = BatchStore(run_dir, ident)

    def natural(batch):
        ref, x0, x1 = (t.to(dev) for t in batch[:3])
        if certified:
            from .. import certify

            c = certify.two_afc(metric, ref, x0, x1, perturbed="ref")
            return {"d0": c.d0, "d1": c.d1, "judge": batch[4].double(), "label": batch[3],
                    "radius": c.radius, "paper_radius": c.paper_radius, "gnorm": c.gnorm}
        d0, d1 = triplet_distances(metric, ref, x0, x1)
        return {"d0": d0, "d1": d1, "judge": batch[4].double(), "label": batch[3]}

    nat = run_batches("natural", store, dataset, natural, batch_size, range(n_total), on_corrupt, progress,
                      desc=f"2AFC {ident['metric']}")
    groups = [dataset.group(int(i)) if hasattr(dataset, "group") else "all" for i in nat["index"]]
    scores = twoafc_scores(nat["d0"], nat["d1"], nat["judge"])
    result: Dict[str, Any] = {
        "metric": ident["metric"], "n": int(nat["index"].numel()), "skipped": len(nat["skipped"]),
        "skipped_items": [f"{i}: {m}" for i, m in nat["skipped"][:20]],
        "natural": grouped(scores, groups),
    }
    if certified:
        radius = nat["radius"].double()
        result["certified"] = certified_summary(scores, radius, groups, cert_eps, nat["paper_radius"].double())
        result["certified"]["gnorm_median"] = float(nat["gnorm"].double().median())
    if attack is not None:
        from .. import attacks

        result["attacked"] = {"threat": asdict(attack), "eps": {}}
        for e in attack.eps:
            def attacked(batch, e=e):
                ref, x0, x1 = (t.to(dev) for t in batch[:3])
                res = attacks.run_2afc(metric, ref, x0, x1, batch[3].to(dev), norm=attack.norm, eps=e,
                                       method=attack.method, target=attack.target, steps=attack.steps,
                                       restarts=attack.restarts, seed=attack.seed)
                return {"adv_d0": res.adv_d0.detach(), "adv_d1": res.adv_d1.detach(), "judge": batch[4].double()}

            adv = run_batches(f"attack_{attack.norm}_{e:g}", store, dataset, attacked, batch_size, range(n_total),
                              on_corrupt, progress, desc=f"{attack.label} eps={e:g}")
            g2 = [dataset.group(int(i)) if hasattr(dataset, "group") else "all" for i in adv["index"]]
            result["attacked"]["eps"][f"{e:g}"] = grouped(twoafc_scores(adv["adv_d0"], adv["adv_d1"], adv["judge"]), g2)
    return result


def budget_key(e: float) -> str:
    """Key of a certified budget: ``k/255`` when ε is a multiple of 1/255 (36/255), else ε itself (0.5):
    rounding 0.5 to "128/255" would name a budget that was not evaluated. The tolerance admits budgets
    read back from keys rounded to 6 digits ("0.031373" is 8/255)."""
    k = e * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-3 else f"{e:g}"


def budget_value(key: str) -> float:
    """ε of a :func:`budget_key` ("36/255" or "0.5")."""
    num, _, den = key.partition("/")
    return float(num) / float(den) if den else float(num)


def certified_summary(scores: torch.Tensor, radius: torch.Tensor, groups: Sequence[str], at: Sequence[float],
                      paper_radius: Optional[torch.Tensor] = None, grid: int = 121) -> Dict[str, Any]:
    """Certified score vs ε (curve on a grid up to the largest radius) and at the budgets ``at``."""
    from .certified import certified_curve

    hi = max(max(at) * 1.5, float(radius.max()) * 1.05 if radius.numel() else 0.0, 1e-3)
    eps_grid = torch.linspace(0, hi, grid, dtype=torch.float64)
    out: Dict[str, Any] = {
        "eps": [float(e) for e in eps_grid],
        "curve": [float(v) for v in certified_curve(scores, radius, eps_grid)],
        "at": {budget_key(e): grouped(scores * (radius > e).double(), groups) for e in at},
        "median_radius": float(radius.median()),
    }
    if paper_radius is not None and torch.isfinite(paper_radius).all():
        out["paper_curve"] = [float(v) for v in certified_curve(scores, paper_radius, eps_grid)]
        out["paper_at"] = {budget_key(e): float((scores * (paper_radius > e).double()).mean()) for e in at}
    return out

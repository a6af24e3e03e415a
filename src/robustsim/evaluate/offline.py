"""The ordering-suite report: every metric that runs without downloads, on the held-out ordering suite.

Since the judged suite (:mod:`.results`, docs/RESULTS.md) became the headline, this report is a smoke
test: ``robustsim eval --suite offline`` writes docs/ORDERING.md from :data:`RESULTS_METRICS`.
The shipped model and the previous default (``lipsim-effnet``) are loaded through the hub.
Random-weight models are marked as such.

Protocol (documented in ORDERING.md): ordering suite on held-out photos at each metric's native size
(64 for LPIPS), natural 2AFC; APGD-CE l2 on the reference at 0.5/1/2/3 ([0, 1] pixel units); certified
at 36/72/108 /255 (certified metrics); embedding attack at ε = 1 and retrieval top-1 on a subset.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import InputError

#: metrics in docs/ORDERING.md, in table order
RESULTS_METRICS: List[str] = ["lipsim-default", "lipsim-effnet", "effnet-lite0-cosine", "lpips-alex", "lipsim-random"]

#: where a model's weights come from, as the report tables say it (docs/ORDERING.md and docs/RESULTS.md)
MODEL_NOTES: Dict[str, str] = {"lipsim-default": "shipped model", "lipsim-effnet": "previous default, EfficientNet recipe",
                               "effnet-lite0-cosine": "ImageNet weights", "lipsim-random": "random weights"}


def _effnet():
    from .. import hub

    return hub.load("effnet-lite0-cosine"), MODEL_NOTES["effnet-lite0-cosine"], 224


def _lpips_alex():
    from .. import hub

    return hub.load("lpips-alex", pretrained_trunk=False, seed=0), "random trunk, real v0.1 heads", 64


def lipsim_random():
    from ..metrics.lipsim import CPU_DEFAULT, LipSim

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = LipSim.from_config(CPU_DEFAULT)
    m.name = "lipsim-cpu"
    return m.eval(), MODEL_NOTES["lipsim-random"], CPU_DEFAULT.input_size


def _packaged_lipsim(name: str):
    from .. import hub

    m = hub.load(name)
    return m, MODEL_NOTES[name], m.input_size[0]


#: name -> () -> (metric, note, suite image side)
OFFLINE_METRICS: Dict[str, Callable[[], Tuple[Any, str, int]]] = {
    "effnet-lite0-cosine": _effnet,
    "lpips-alex": _lpips_alex,
    "lipsim-random": lipsim_random,
    "lipsim-default": lambda: _packaged_lipsim("lipsim-default"),
    "lipsim-effnet": lambda: _packaged_lipsim("lipsim-effnet"),
}


@dataclass
class OfflinePlan:
    """Sizes of the offline run (the defaults keep it to minutes on 2 CPU cores)."""

    n: int = 110  # 2AFC triplets (natural and certified): 10 per distortion kind
    n_attack: int = 22  # triplets attacked (a prefix of the same suite: two per kind)
    eps: Sequence[float] = (0.5, 1.0, 2.0, 3.0)
    steps: int = 20  # APGD-CE iterations (the papers use 100)
    n_embed: int = 16  # images for the embedding attack
    embed_eps: Sequence[float] = (1.0,)
    n_retrieval: int = 22
    retrieval_eps: float = 2.0
    seed: int = 0
    batch_size: int = 16


def offline_retrieval_set(n: int, size: int, seed: int = 0):
    """Queries = the weaker distortion of each held-out ordering triplet, gallery = the references."""
    from ..data.photos import OrderingSuite

    ref, x0, x1, lab, _ = OrderingSuite(n=n, size=size, seed=seed + 1000).tensors()
    q = torch.where(lab.view(-1, 1, 1, 1).bool(), x1, x0)
    return q, ref, torch.arange(n)


def evaluate_offline_metric(name: str, plan: OfflinePlan, run_dir=None, progress: bool = True,
                            device=None) -> Dict[str, Any]:
    """All offline protocols for one metric of :data:`OFFLINE_METRICS`."""
    from ..data.photos import OrderingSuite
    from .embedding import evaluate_embedding_attack
    from .retrieval import evaluate_retrieval
    from .twoafc import AttackSpec, evaluate_2afc

    if name not in OFFLINE_METRICS:
        raise InputError(f"no offline recipe for {name!r}; known: {', '.join(OFFLINE_METRICS)}")
    metric, note, size = OFFLINE_METRICS[name]()
    suite = OrderingSuite(n=plan.n, size=size, seed=plan.seed)
    sub = None if run_dir is None else f"{run_dir}/{name}"
    t0 = time.perf_counter()
    res = evaluate_2afc(metric, suite, plan.batch_size, device, certified=bool(metric.certified),
                        run_dir=None if sub is None else f"{sub}/natural", progress=progress,
                        config={"suite": f"ordering n={plan.n} size={size} seed={plan.seed}"})
    att = evaluate_2afc(metric, suite, plan.batch_size, device, attack=AttackSpec("apgd-ce", "l2", plan.eps, "ref", plan.steps),
                        limit=plan.n_attack, run_dir=None if sub is None else f"{sub}/attack", progress=progress,
                        config={"suite": f"ordering n={plan.n} size={size} seed={plan.seed}"})
    res["attacked"] = att["attacked"]
    res["attacked"]["n"] = att["n"]
    res["attacked"]["natural_on_subset"] = att["natural"]["overall"]
    if getattr(metric, "has_embedding", False):
        res["embedding"] = evaluate_embedding_attack(metric, suite, plan.embed_eps, plan.steps, plan.batch_size, device,
                                                     run_dir=None if sub is None else f"{sub}/embedding",
                                                     limit=plan.n_embed, progress=progress)
        q, g, t = offline_retrieval_set(plan.n_retrieval, size, plan.seed)
        res["retrieval"] = evaluate_retrieval(metric, q, g, t, eps=plan.retrieval_eps, steps=plan.steps,
                                              batch_size=plan.batch_size, device=device, progress=progress)
    res.update({"metric": name, "note": note, "size": size, "seconds": round(time.perf_counter() - t0, 1)})
    return res


RESULTS_PREAMBLE = """Generated by `robustsim eval --suite offline --out docs`; do not edit by hand. A smoke test: the
headline results are the judged 2AFC suite in docs/RESULTS.md (`python scripts/make_results.py`).
Data: the *ordering* suite of `robustsim.data.photos` on the **held-out photos**
(coffee, rocket, flower, motorcycle_left; colour only), one distortion at two strengths, the weaker one
is the correct answer; {n} triplets per metric at the metric's native size (LPIPS 64×64, EfficientNet 224×224,
LipSim-CPU 128×128), seed {seed}. Attacked: APGD-CE, l2, reference perturbed, {steps} iterations
(the papers use 100), on the first {n_attack} triplets (their natural score is in the JSON). Certified:
sound radius of `robustsim.certify.two_afc`, reference perturbed. Embedding attack: l2 PGD, {n_embed} images.
Retrieval: {n_ret} queries (weaker distortion) against their {n_ret} references, query attacked with l2 ε={reps:g}.
Models with random weights are marked: their numbers test the pipeline, not the metric.
Model cards (the shipped model on the judged suite; `lipsim-effnet` against its EfficientNet teacher): docs/MODELS.md.
Budgets are in [0, 1] pixel units at the metric's input size. Runtime per metric is in results.json."""


def run_offline_suite(out_dir, metrics: Optional[Sequence[str]] = None, plan: Optional[OfflinePlan] = None,
                      run_dir=None, progress: bool = True, device=None, stem: str = "RESULTS") -> Dict[str, Any]:
    """Evaluate every offline metric and write ``<out_dir>/<stem>.md`` (+ JSON, PNG plots)."""
    from .report import write_report

    plan = plan or OfflinePlan()
    names = list(metrics or RESULTS_METRICS)
    results = [evaluate_offline_metric(n, plan, run_dir, progress, device) for n in names]
    pre = RESULTS_PREAMBLE.format(n=plan.n, seed=plan.seed, steps=plan.steps, n_attack=plan.n_attack,
                                  n_embed=plan.n_embed, n_ret=plan.n_retrieval, reps=plan.retrieval_eps)
    paths = write_report(results, out_dir, title="Offline results (real photos, held-out split)", preamble=pre, stem=stem)
    return {"results": results, "paths": {k: str(v) for k, v in paths.items()}}

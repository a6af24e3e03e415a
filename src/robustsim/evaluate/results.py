"""docs/RESULTS.md: the judged 2AFC suite as the headline, natural / attacked / certified, per kind,
distance correlation, balance, and the ordering suite as a smoke test.

    python scripts/make_results.py            # == robustsim eval --suite judged --out docs

Why one resumable run: the full table (11+ metrics, three threat models at four budgets, certified)
takes tens of minutes on two CPU cores. Judge distances are cached (:mod:`robustsim.data.judged`),
each metric's 2AFC batches are stored under ``run_dir`` (:mod:`.runner`) and each finished metric's
result is saved as JSON, so an interrupted run resumes where it stopped and a rerun only rewrites the
report. Sizes are :class:`ResultsPlan`; ``ResultsPlan.tiny()`` is the seconds-long version the tests use.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union


from ..errors import InputError
from .judged import evaluate_judged, evaluate_pairs, fmt_eps
from .offline import MODEL_NOTES
from .twoafc import AttackSpec, budget_value

PathLike = Union[str, os.PathLike]

#: Metrics of the headline, in table order (R-LPIPS checkpoints present offline are added after "dists").
JUDGED_RESULTS_METRICS: List[str] = ["lipsim-default", "lipsim-effnet", "effnet-lite0-cosine", "lpips-alex", "lpips-vgg",
                                     "stlpips-alex", "stlpips-vgg", "dists", "lipsim-random", "pixel-l2"]


@dataclass
class ResultsPlan:
    """Sizes of the RESULTS run (defaults: about 45 min on 2 CPU cores, see docs/RESULTS.md)."""

    n: int = 500  # judged consensus triplets (natural, certified)
    n_attack: int = 24  # the first n_attack of them are attacked (3 threat models x 4 budgets each)
    n_pairs: int = 340  # pair suite (20 per kind)
    l2_eps: Sequence[float] = (0.5, 1.0, 2.0, 3.0)
    l2_steps: int = 10  # APGD-CE iterations (the papers use 100; early stop ends flipped triplets sooner)
    linf_eps: Sequence[float] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    linf_steps: int = 10
    linf_targets: Sequence[str] = ("ref", "x0")
    n_ordering: int = 110  # ordering smoke test (natural only)
    size: int = 64
    seed: int = 0
    per_window: int = 2
    batch_size: int = 16
    extra_dirs: Sequence[str] = field(default_factory=list)

    @classmethod
    def tiny(cls, **kw) -> "ResultsPlan":
        """A seconds-long plan for tests and for trying the command."""
        base = dict(n=24, n_attack=4, n_pairs=17, l2_eps=(0.5, 2.0), l2_steps=2, linf_eps=(2 / 255, 8 / 255), linf_steps=2,
                    n_ordering=11, batch_size=8)
        base.update(kw)
        return cls(**base)

    def attacks(self) -> List[AttackSpec]:
        out = [AttackSpec("apgd-ce", "l2", list(self.l2_eps), "ref", self.l2_steps, 1, self.seed)]
        out += [AttackSpec("pgd", "linf", list(self.linf_eps), t, self.linf_steps, 1, self.seed) for t in self.linf_targets]
        return out


def _note(name: str, judges: Sequence[str]) -> str:
    if name in judges:
        return "judge; scored with leave-one-out labels"
    if name.startswith("rlpips-alex-"):  # heads shipped in the package (metrics.lpips.SHIPPED_RLPIPS)
        return "heads trained here on the judges' labels of training photos"
    return {**MODEL_NOTES, "pixel-l2": "no weights"}.get(name, "released checkpoint" if name.startswith("rlpips-") else "")


def load_results_metric(name: str, device=None) -> Tuple[Any, str]:
    """(metric, note) for a RESULTS row: hub names with their real weights, ``lipsim-random``, or a saved file."""
    if name == "lipsim-random":
        from .offline import lipsim_random

        m, note, _ = lipsim_random()
        m.name = "lipsim-random"
        return m, note
    from .. import hub

    m = hub.load(name, device=device)
    return m, ""


def default_metrics() -> List[str]:
    """:data:`JUDGED_RESULTS_METRICS` plus every R-LPIPS checkpoint whose weights are present offline."""
    from .. import hub

    rl = [n for n in hub.list_models() if n.startswith("rlpips-") and hub.weights_present(n)]
    names = list(JUDGED_RESULTS_METRICS)
    i = names.index("dists") + 1
    return names[:i] + rl + names[i:]


def _plan_ident(plan: ResultsPlan, pool_key: str, pairs_key: str, name: str, fp: str) -> Dict[str, Any]:
    return {"plan": json.loads(json.dumps(asdict(plan), default=list)), "pool": pool_key, "pairs": pairs_key,
            "metric": name, "weights": fp}


def run_judged_results(out_dir: PathLike = "docs", metrics: Optional[Sequence[str]] = None,
                       plan: Optional[ResultsPlan] = None, run_dir: Optional[PathLike] = "work_data/results_judged",
                       progress: bool = True, device=None, judges: Optional[Sequence[Any]] = None,
                       cache_dir=None, stem: str = "RESULTS", command: str = "python scripts/make_results.py",
                       loader: Callable[[str], Tuple[Any, str]] = None) -> Dict[str, Any]:
    """Evaluate every metric on the judged suite (+ pairs, + ordering smoke test) and write the report.

    ``judges`` (default :data:`~robustsim.data.judged.DEFAULT_JUDGES`) and ``loader`` (name -> (metric,
    note)) are injectable for tests. Returns {"results", "pairs", "paths", ...}.
    """
    from ..data.judged import DEFAULT_JUDGES, JudgedPairs, JudgedPool
    from ..data.suites import OrderingSuite
    from .runner import metric_fingerprint
    from .twoafc import evaluate_2afc

    plan = plan or ResultsPlan()
    judges = list(judges) if judges is not None else list(DEFAULT_JUDGES)
    judge_names = [j if isinstance(j, str) else (getattr(j, "name", "") or type(j).__name__) for j in judges]
    names = list(metrics) if metrics else default_metrics()
    if not names:
        raise InputError("no metrics to evaluate")
    loader = loader or (lambda n: load_results_metric(n, device))
    t_start = time.perf_counter()
    extra = list(plan.extra_dirs) or None
    pool = JudgedPool(size=plan.size, split="heldout", judges=judges, seed=plan.seed, extra_dirs=extra,
                      per_window=plan.per_window, cache_dir=cache_dir, batch_size=plan.batch_size, device=device,
                      progress=progress)
    base = pool.suite(plan.n)  # labels every judge needs up front (cached), and the full-consensus view
    for jn in judge_names:
        pool.suite(plan.n, leave_out=jn)
    pairs = JudgedPairs(n=plan.n_pairs, size=plan.size, split="heldout", judges=judges, seed=plan.seed,
                        extra_dirs=extra, cache_dir=cache_dir, batch_size=plan.batch_size, device=device,
                        progress=progress)
    results, pair_res, ordering = [], [], []
    reused = 0
    for name in names:
        metric, note = loader(name)
        metric.name = getattr(metric, "name", "") or name
        note = note or _note(name, judge_names)
        fp = metric_fingerprint(metric)
        ident = _plan_ident(plan, pool.cache_key, pairs.cache_key, name, fp)
        saved = None if run_dir is None else Path(run_dir) / _safe(name) / "result.json"
        if saved is not None and saved.is_file():
            try:
                got = json.loads(saved.read_text())
                if got.get("ident") == ident:
                    reused += 1
                    results.append(got["judged"])
                    pair_res.append(got["pairs"])
                    ordering.append(got["ordering"])
                    continue
            except (ValueError, KeyError):
                pass
        sub = None if run_dir is None else str(Path(run_dir) / _safe(name))
        r = evaluate_judged(metric, pool, plan.n, name=name, attacks=plan.attacks(), n_attack=plan.n_attack,
                            batch_size=plan.batch_size, device=device, run_dir=sub, progress=progress)
        r["note"] = note
        p = evaluate_pairs(metric, pairs, name=name, batch_size=plan.batch_size, device=device, progress=progress)
        side = r["size"]
        osuite = OrderingSuite(n=plan.n_ordering, size=side, seed=plan.seed)
        o = evaluate_2afc(metric, osuite, plan.batch_size, device, run_dir=None if sub is None else f"{sub}/ordering",
                          progress=progress, config={"suite": f"ordering n={plan.n_ordering} size={side} seed={plan.seed}"})
        o = {"metric": name, "n": o["n"], "natural": o["natural"]["overall"]}
        results.append(r)
        pair_res.append(p)
        ordering.append(o)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            tmp = saved.with_suffix(".tmp")
            tmp.write_text(json.dumps({"ident": ident, "judged": r, "pairs": p, "ordering": ordering[-1]}))
            os.replace(tmp, saved)
    meta = {"plan": json.loads(json.dumps(asdict(plan), default=list)), "judges": judge_names,
            "photos": [s.name for s in pool.sources], "windows": len(pool.windows), "candidates": pool.n_candidates,
            "counts": base.counts, "balance": base.balance(), "kinds": list(pool.kinds),
            "seconds": round(time.perf_counter() - t_start, 1), "reused": reused, "command": command}
    paths = write_results(results, pair_res, ordering, meta, out_dir, stem)
    return {"results": results, "pairs": pair_res, "ordering": ordering, "meta": meta,
            "paths": {k: str(v) for k, v in paths.items()}}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name)


# --------------------------------------------------------------------------- report


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _rho(v) -> str:
    return "–" if v is None or v != v else f"{v:.2f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _threat_label(t: Dict[str, Any]) -> str:
    m = {"apgd-ce": "APGD-CE", "pgd": "PGD"}.get(t["method"], t["method"])
    return f"{m} {'ℓ2' if t['norm'] == 'l2' else 'ℓ∞'} {t['target']}"


def headline_table(results: Sequence[Dict[str, Any]]) -> str:
    """Metric | n | natural | each threat model at each budget | certified at 36/72/108 /255."""
    cols: List[Tuple[int, str, str]] = []  # (threat index, eps key, header)
    threats = results[0].get("attacks", []) if results else []
    for ti, a in enumerate(threats):
        for e in a["eps"]:
            cols.append((ti, e, f"{_threat_label(a['threat'])} {fmt_eps(float(e), a['threat']['norm'])}"))
    cert_keys = sorted({k for r in results for k in (r.get("certified") or {}).get("at", {})},
                       key=budget_value)
    head = ["Metric", "n", "Natural"] + [h for _, _, h in cols] + [f"Certified {k}" for k in cert_keys]
    rows = []
    for r in results:
        label = f"{r['metric']} ({r['note']})" if r.get("note") else r["metric"]
        row = [label, str(r["n"]), _pct(r["natural"]["overall"])]
        for ti, e, _ in cols:
            att = r["attacks"][ti] if ti < len(r.get("attacks", [])) else None
            row.append(_pct(att["eps"].get(e)) if att else "–")
        row += [_pct(r["certified"]["at"][k]["overall"]) if r.get("certified") and k in r["certified"]["at"] else "n/a"
                for k in cert_keys]
        rows.append(row)
    return _table(head, rows)


def kinds_table(results: Sequence[Dict[str, Any]], kinds: Sequence[str]) -> str:
    head = ["Metric"] + list(kinds) + ["overall"]
    return _table(head, [[r["metric"]] + [_pct(r["kinds"].get(k)) for k in kinds] + [_pct(r["natural"]["overall"])]
                         for r in results])


def pairs_table(pairs: Sequence[Dict[str, Any]], kinds: Sequence[str]) -> str:
    head = ["Metric", "overall"] + list(kinds)
    return _table(head, [[p["metric"], _rho(p["overall"])] + [_rho(p["kinds"].get(k)) for k in kinds] for p in pairs])


def balance_section(meta: Dict[str, Any]) -> str:
    b = meta["balance"]
    kinds = meta["kinds"]
    rows = [[k, str(b["kinds"][k]["n"]), _pct(b["kinds"][k]["wins"])] for k in kinds if k in b["kinds"]]
    c = meta["counts"]
    text = (f"{c['labelled']} candidates judged to find {c['consensus']} unanimous triplets: {c['dropped']} dropped "
            f"for lack of consensus ({100 * c['dropped'] / max(c['labelled'], 1):.0f} %). Kind pairs seen: "
            f"{b['pairs_seen']} of {b['pairs_total']}; mean |win rate − 0.5| over pairs {b['mean_abs_skew']:.2f}; "
            f"pairs (with ≥ 4 triplets) whose win rate lies in [20 %, 80 %]: {_pct(b['balanced_fraction'])} %. "
            f"Most one-sided pairs (first-named kind's win rate): {', '.join(b['one_sided'][:6]) or 'none'}.")
    return text + "\n\n" + _table(["Kind", "triplets", "judged closer (%)"], rows)


def kinds_reference(kinds: Sequence[str]) -> str:
    from ..data.distortions import KINDS

    rows = []
    for k in kinds:
        d = KINDS[k]
        lo, hi = d.judged
        rows.append([k, d.family, d.doc, f"{lo:.2f}–{hi:.2f} ({d.describe(lo)} … {d.describe(hi)})"])
    return _table(["Kind", "family", "what s means", "judged strength range"], rows)


def plot_accuracy_vs_eps(results: Sequence[Dict[str, Any]], path: PathLike) -> Optional[Path]:
    """Attacked 2AFC score vs ε, one panel per threat model, one line per metric (ε = 0: natural on the subset)."""
    from .report import pyplot, save_figure

    threats = results[0].get("attacks", []) if results else []
    if not threats:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(threats), figsize=(4.6 * len(threats), 3.8), squeeze=False)
    for ti, ax in enumerate(axes[0]):
        t = threats[ti]["threat"]
        scale = 255.0 if t["norm"] == "linf" else 1.0
        for r in results:
            a = r["attacks"][ti]
            xs = [0.0] + [float(e) * scale for e in a["eps"]]
            ys = [100 * a["natural_on_subset"]] + [100 * v for v in a["eps"].values()]
            ax.plot(xs, ys, marker="o", ms=3, label=r["metric"])
        ax.set_title(_threat_label(t), fontsize=9)
        ax.set_xlabel("ε (×1/255)" if t["norm"] == "linf" else "ε (ℓ2, [0,1] pixels)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("judged 2AFC score (%)")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    return save_figure(fig, path)


def write_results(results, pairs, ordering, meta, out_dir: PathLike, stem: str = "RESULTS") -> Dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.json`` and the plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "judged": list(results), "pairs": list(pairs),
                                         "ordering": list(ordering)}, indent=1))
    plot = plot_accuracy_vs_eps(results, out / f"{stem}_judged_eps.png")
    from .report import plot_certified

    cert = plot_certified([r for r in results if r.get("certified")], out / f"{stem}_certified.png")
    plan = meta["plan"]
    kinds = meta["kinds"]
    photos = meta["photos"]
    md = ["# Results: judged 2AFC on held-out real photos",
          f"Generated by `{meta['command']}` in {meta['seconds'] / 60:.0f} min"
          + (f" ({meta['reused']} of {len(results)} metrics' results reused from its cache; each metric's own run "
             "time is at the end)" if meta.get("reused") else "")
          + "; do not edit by hand. Numbers are 2AFC scores in %.",
          "**Labels are judge consensus, not human judgments.** There is no human 2AFC data on this machine; a triplet's "
          f"label is the unanimous vote of {len(meta['judges'])} metrics fitted to human judgments "
          f"({', '.join(meta['judges'])}). When one of them is scored, its own vote is left out "
          "(its labels come from the others, so its n of unanimous triplets is drawn from a slightly larger set). "
          "A metric that shares the judges' blind spots is not penalised for them. Protocol and limits: docs/DATA.md.",
          f"Data: `robustsim.data.judged` on the **held-out** photos ({len(photos)}: {', '.join(photos)}), "
          f"{meta['windows']} windows × {plan['per_window']} = {meta['candidates']} candidate triplets at "
          f"{plan['size']}×{plan['size']} px, seed {plan['seed']}; each triplet's two candidates are distortions of "
          f"different kinds ({len(kinds)} kinds) at a shared perceptual level. "
          f"n = {plan['n']} unanimous triplets per metric. Metrics whose native size differs see the same images "
          "upsampled (bicubic) to it; budgets are [0, 1] pixel units at that size. "
          f"Attacks on the first {plan['n_attack']} triplets: APGD-CE ℓ2 (reference perturbed, {plan['l2_steps']} steps; "
          f"the papers use 100) and PGD ℓ∞ ({plan['linf_steps']} steps) perturbing the reference and, R-LPIPS' threat "
          "model, x0. Certified: sound radius of `robustsim.certify.two_afc`, reference perturbed (certified metrics only).",
          "Also on this suite: R-LPIPS trained on the real AlexNet, its paper's Table 1 and the perceptual attacks "
          "bounded in real metrics: [RLPIPS.md](RLPIPS.md).",
          "## Judged 2AFC score (%): natural, attacked, certified", headline_table(results)]
    if plot:
        md.append(f"![judged 2AFC score vs attack budget]({plot.name})")
    md += ["## Distance correlation: Spearman ρ with the judges' mean normalised distance",
           f"Pair suite: reference + one distortion, {plan['n_pairs']} pairs ({plan['n_pairs'] // max(len(kinds), 1)} per kind), "
           "strength uniform in the kind's judged range; the target is the mean over the judges (minus the scored one) "
           "of each judge's distance divided by its median. *overall* mixes kinds: it asks whether the metric ranks a "
           "2-px shift and a blur the way the judges do.",
           pairs_table(pairs, kinds),
           "## Natural judged score (%) per kind (triplets involving the kind)", kinds_table(results, kinds),
           "## Balance of the suite", balance_section(meta),
           "## Distortion kinds", kinds_reference(kinds),
           "## Smoke test: the ordering suite (natural)",
           f"One distortion at two strengths, the weaker is correct by construction; {plan['n_ordering']} held-out "
           "triplets at each metric's native size. Every metric, a random network included, should score ~100 %: a "
           "lower number means a broken pipeline, a high one means nothing more.",
           _table(["Metric", "n", "Natural"], [[o["metric"], str(o["n"]), _pct(o["natural"])] for o in ordering])]
    if cert:
        md.append(f"![certified judged 2AFC score]({cert.name})")
    secs = ", ".join(f"{r['metric']} {r['seconds']:.0f} s" for r in results)
    md.append(f"Run time per metric (judged natural + attacks): {secs}.")
    paths["md"].write_text("\n\n".join(md) + "\n")
    if plot:
        paths["plot"] = plot
    if cert:
        paths["certified_png"] = cert
    return paths

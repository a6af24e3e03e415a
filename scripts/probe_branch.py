#!/usr/bin/env python
"""What a fixed extra branch buys a certified metric: natural vs certified 2AFC along a family of hybrids.

    python scripts/probe_branch.py --out docs/probe_branch/pixels                 # pixels (lipsim-default, 500 triplets)
    python scripts/probe_branch.py --branch rest --sines 0,0.1,0.2,0.3,0.5,0.7,1 --out docs/probe_branch/rest
    python scripts/probe_branch.py --metric A --branch metric --other B --sines 0,0.55,0.71,0.84,1 --out OUT

Why: the plain l2 distance on pixels keeps about half of the held-out judged triplets under APGD at
ε = 1 (docs/MODELS.md), where the shipped LipSim keeps under a third, because its pooling, dense layers
and truncation contract most pixel directions. The cheapest way to hand robustness to the learned metric,
without training, is to append features to its vector g (1-Lipschitz). Three branches:

* ``pixels``: P_k(x) = k · avgpool_k(x - 1/2), the projection onto k×k-block-constant images (1-Lipschitz),
  and h_θ(x) = [cos θ · g(x), sin θ · P_k(x)], 1-Lipschitz for every θ (||h(x) - h(y)||² <=
  (cos² θ + sin² θ)||x - y||²); sin θ = 1, k = 1 is the pixel cosine;
* ``rest``: the coordinates the LipSim network computes beyond its ``embed_dim`` (which its Truncate layer
  drops), h_s(x) = [g(x), s · rest(x)]: for s <= 1 a contraction of the untruncated output, so 1-Lipschitz;
  s = 1 is the network without truncation;
* ``metric``: another certified metric's raw features g₂ (``--other``), h_θ = [cos θ · g, sin θ · g₂], 1-Lipschitz
  when both are: a two-network ensemble, which agrees more than either member only if they err on different
  triplets. sin θ = 1 is the other metric alone.

Either way the cosine distance of h has the certificate of :func:`robustsim.certify.geometry.two_afc_bounds`
(here in exact arithmetic: the float32 features are taken as exact, which is the paper's convention, not
robustsim's proven one). The probe sweeps sin θ (or s) and k and reports, per point, natural agreement with
the judges' consensus and the certified share of the reference-perturbed 2AFC at each budget; 0 is the
metric itself. Labels are the consensus of human-calibrated metrics, not people.

Writes ``OUT/probe.md`` (table and the command) and ``OUT/probe.png`` (natural agreement against the
certified share at the largest budget, one curve per k), plus how much of a pixel distance the network keeps
between a reference and its natural distortions (:func:`natural_gain`) and along the attacker's direction
(:func:`attack_gain`), overall and after each stage (:func:`stage_gains`): the ratio of the two is what caps
the radius.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 (after the offline switches)
import torch.nn.functional as F  # noqa: E402


def pixel_branch(x: torch.Tensor, k: int) -> torch.Tensor:
    """P_k(x) = k·avgpool_k(x - 1/2), flattened, float64: an orthogonal projection up to the scale, so
    1-Lipschitz in l2 (each k×k block's k² values are replaced by one value k·mean, whose square is at
    most the block's sum of squares)."""
    if k < 1 or x.shape[-1] % k or x.shape[-2] % k:
        raise ValueError(f"pool k={k} must be >= 1 and divide the image side {tuple(x.shape[-2:])}")
    p = x.double() - 0.5
    return (F.avg_pool2d(p, k) * k if k > 1 else p).flatten(1)


def hybrid(g: torch.Tensor, p: torch.Tensor, sin: float, joint: bool = False) -> torch.Tensor:
    """[cos θ·g, sin θ·p]: 1-Lipschitz when g and p are. ``joint``: g and p are disjoint coordinates of one
    1-Lipschitz map, so [g, sin·p] is already 1-Lipschitz and g keeps its scale."""
    if not 0.0 <= sin <= 1.0:
        raise ValueError(f"sin θ must lie in [0, 1], got {sin}")
    first = 1.0 if joint else (1.0 - sin * sin) ** 0.5
    return torch.cat([first * g.double(), sin * p.double()], dim=1)


def scores_and_radii(h_ref: torch.Tensor, h0: torch.Tensor, h1: torch.Tensor, judge: torch.Tensor):
    """Per-triplet 2AFC score (BAPPS formula) and exact-arithmetic certified radius, reference perturbed."""
    from robustsim.certify.geometry import BoundedFeatures, two_afc_bounds
    from robustsim.evaluate.twoafc import twoafc_scores

    b = two_afc_bounds(*(BoundedFeatures.exact(h) for h in (h_ref, h0, h1)), perturbed="ref")
    return twoafc_scores(b["d0"], b["d1"], judge), b["radius"]


BRANCHES = ("pixels", "rest", "metric")


def frontier(feats: Dict[str, torch.Tensor], judge: torch.Tensor, pools: Sequence[int], sines: Sequence[float],
             eps: Sequence[float], branch: str = "pixels") -> List[dict]:
    """One row per (k, sin θ): natural agreement and certified share at each ε, in %.

    feats: ``g_ref, g0, g1`` (the metric's raw features), ``ref, x0, x1`` (the images, N×3×H×W) and, for
    ``branch="rest"`` / ``"metric"``, ``rest_ref, rest0, rest1`` (the coordinates past the truncation, or the
    other metric's features; ``pools`` unused, k = 0)."""
    from robustsim.evaluate.certified import certified_accuracy
    from robustsim.evaluate.twoafc import budget_key

    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    rows = []
    for k in (pools if branch == "pixels" else [0]):
        if branch == "pixels":
            px = {n: pixel_branch(feats[n], k) for n in ("ref", "x0", "x1")}
        else:
            px = {"ref": feats["rest_ref"], "x0": feats["rest0"], "x1": feats["rest1"]}
        for s in sines:
            if s == 0 and k != pools[0] and branch == "pixels":
                continue  # θ = 0 ignores the pixel branch: one row is enough
            h = [hybrid(feats[gn], px[xn], s, joint=branch == "rest")
                 for gn, xn in (("g_ref", "ref"), ("g0", "x0"), ("g1", "x1"))]
            sc, rad = scores_and_radii(*h, judge)
            rows.append({"k": int(k), "sin": float(s), "natural": 100 * float(sc.mean()),
                         "certified": {budget_key(e): 100 * certified_accuracy(sc, rad, e) for e in eps}})
    return rows


def gain(fa: torch.Tensor, fb: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||fa - fb|| / ||a - b|| per pair (float64): how much of the pixel distance a map keeps; identical pairs
    are skipped."""
    pix = (a.double() - b.double()).flatten(1).norm(dim=1)
    moved = (fa.double() - fb.double()).flatten(1).norm(dim=1)
    return moved[pix > 0] / pix[pix > 0]


def _quantiles(t: torch.Tensor) -> Dict[str, float]:
    q = t.double().quantile(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"q10": float(q[0]), "median": float(q[1]), "q90": float(q[2])}


def natural_gain(feats: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Quantiles (10/50/90%) of :func:`gain` between each reference and its distorted images: how much of a
    natural distortion's pixel distance the 1-Lipschitz network keeps. An attack on the reference can get a
    gain near the network's Lipschitz constant, so a gain far below 1 on natural distortions is what caps the
    radius."""
    return _quantiles(torch.cat([gain(feats["g_ref"], feats[g], feats["ref"], feats[x])
                                 for g, x in (("g0", "x0"), ("g1", "x1"))]))


def attack_images(metric, refs: torch.Tensor, eps: float = 1.0, steps: int = 30) -> torch.Tensor:
    """The worst direction an attacker finds: LipSim's embedding attack (l2 PGD, ``steps`` iterations, budget
    ``eps``) on each reference."""
    from robustsim.attacks.embedding import embedding_attack

    return embedding_attack(metric, refs, eps=eps, steps=steps)[0]


def attack_gain(metric, refs: torch.Tensor, adv: torch.Tensor) -> Dict[str, float]:
    """Quantiles of :func:`gain` between each reference and its attacked copy (:func:`attack_images`)."""
    with torch.no_grad():
        return _quantiles(gain(metric.raw_features(refs), metric.raw_features(adv), refs, adv))


def stage_gains(network, a: torch.Tensor, b: torch.Tensor) -> Dict[str, float]:
    """Median :func:`gain` after each stage of a LipSim network (stem, convs, pool, linears, truncate): where
    the distance between a and b is lost."""
    out: Dict[str, float] = {}
    xa, xb = a, b
    with torch.no_grad():
        for name, layer in network.layers():
            xa, xb = layer(xa), layer(xb)
            stage = name.split(".")[0]
            if stage != "flatten":
                out[stage] = _quantiles(gain(xa, xb, a, b))["median"]
    return out


def load_features(metric_name: str, n: int, seed: int, size: int, progress: bool,
                  branch: str = "pixels", other: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The first ``n`` held-out judged triplets at ``size`` px, their judge labels, the metric and its raw
    features (float32 network, up-cast). The metric must take ``size`` natively: a resize inside it would
    make g more than 1-Lipschitz in these pixels and the hybrid's certificate wrong. ``branch="metric"``
    loads ``other`` under the same checks and stores its features as the rest."""
    from robustsim import load
    from robustsim.data.judged import JudgedPool
    from robustsim.evaluate.judged import judged_tensors, native_size

    pool = JudgedPool(size=64, split="heldout", seed=seed, per_window=2, progress=progress)

    def checked(name: str):
        m = load(name)
        if not getattr(m, "certified", False) or not hasattr(m, "raw_features"):
            raise SystemExit(f"probe_branch: {name} is not a certified embedding metric (e.g. lipsim-default)")
        if native_size(m, size) != size:
            raise SystemExit(f"probe_branch: {name} takes {native_size(m, size)} px, not --size {size}: "
                             "pass its native size")
        return m

    metric = checked(metric_name)
    out = judged_tensors(pool, metric_name, n, size)
    count = out["ref"].shape[0]
    nets = {"g": metric}
    if branch == "rest":
        from robustsim.train.finetune import with_config

        net_cfg = getattr(getattr(metric, "encoder", None), "config", None)
        if net_cfg is None or not hasattr(net_cfg, "features"):
            raise SystemExit(f"probe_branch: --branch rest needs a LipSim network; {metric_name} is not one")
        if net_cfg.embed_dim == net_cfg.features:
            raise SystemExit(f"probe_branch: {metric_name} keeps all {net_cfg.features} coordinates: no rest to add")
        nets["whole"] = with_config(metric, {"embed_dim": net_cfg.features}).eval()
    if branch == "metric":
        if not other:
            raise SystemExit("probe_branch: --branch metric needs --other (a second certified metric)")
        nets["other"] = checked(other).eval()
    with torch.no_grad():
        for prefix, net in nets.items():
            for name, key in (("ref", "_ref"), ("x0", "0"), ("x1", "1")):
                f = torch.cat([net.raw_features(out[name][i:i + 50]) for i in range(0, count, 50)]).double()
                if prefix == "g":
                    out["g" + key] = f
                elif prefix == "other":
                    out["rest" + key] = f
                else:
                    out["rest" + key] = f[:, out["g_ref"].shape[1]:]
    out["metric"] = metric
    return out


def write(rows: List[dict], eps: Sequence[float], out: Path, command: str, n: int, gains: Dict[str, dict],
          branch: str = "pixels", stages: Optional[Dict[str, Dict[str, float]]] = None) -> None:
    """probe.md (table) and probe.png (natural vs certified at the largest ε, one curve per k)."""
    pixels = branch == "pixels"
    appended = {"rest": "the truncated coordinates", "metric": "a second metric"}.get(branch, "pixels")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustsim.evaluate.twoafc import budget_key

    keys = [budget_key(e) for e in eps]
    what = {"pixels": "hybrid [cos θ·g, sin θ·P_k] of the metric's features g and k-pooled pixels",
            "rest": "hybrid [g, s·rest] of the metric's features g and the coordinates its truncation drops",
            "metric": "ensemble [cos θ·g, sin θ·g₂] of the metric's features g and a second metric's g₂"}[branch]
    lines = [f"Held-out judged suite, n = {n} (labels: consensus of the human-calibrated judges, not people); "
             f"{what}; certified share of the reference-perturbed 2AFC in exact arithmetic.", "",
             {"pixels": "| k | sin θ", "rest": "| branch | s", "metric": "| branch | sin θ"}[branch] + " | natural | " + " | ".join(f"certified ε={k_}" for k_ in keys) + " |",
             "|---:|---:|---:|" + "---:|" * len(keys)]
    for r in rows:
        label = (r["k"] if pixels else {"rest": "rest", "metric": "g₂"}[branch]) if r["sin"] else "—"
        lines.append(f"| {label} | {r['sin']:g} | {r['natural']:.1f}% | "
                     + " | ".join(f"{r['certified'][k_]:.1f}%" for k_ in keys) + " |")
    lines += ["", "Gain of the metric's features, ||g(a) - g(b)|| / ||a - b|| (quantiles 10 / 50 / 90%): the most an "
              "attack can get is the network's Lipschitz constant (at most 1).", "",
              "| between | 10% | median | 90% |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['q10']:.3f} | {v['median']:.3f} | {v['q90']:.3f} |" for k, v in gains.items()]
    if stages:
        names = list(next(iter(stages.values())))
        lines += ["", "Median gain after each stage of the network (from the pixels):", "",
                  "| pairs | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {k} | " + " | ".join(f"{v[n_]:.3f}" for n_ in names) + " |" for k, v in stages.items()]
    lines += ["", f"`{command}`", ""]
    (out / "probe.md").write_text("\n".join(lines))
    (out / "probe.json").write_text(json.dumps({"rows": rows, "gains": gains, "stages": stages}, indent=1))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    base = next(r for r in rows if r["sin"] == 0)
    for k in sorted({r["k"] for r in rows}):
        rs = [base] + [r for r in rows if r["k"] == k and r["sin"] > 0]
        ax.plot([r["certified"][keys[-1]] for r in rs], [r["natural"] for r in rs], "o-", ms=3, label=f"pixels pooled {k}×{k}" if pixels else appended)
    ax.plot([base["certified"][keys[-1]]], [base["natural"]], "k*", ms=12, label="the metric alone")
    ax.set_xlabel(f"certified 2AFC at ε = {keys[-1]} (%)")
    ax.set_ylabel("natural agreement with the judges (%)")
    ax.set_title(f"Appending {appended}: agreement vs certified robustness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "probe.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metric", default="lipsim-default", help="a certified embedding metric (hub name or .safetensors)")
    ap.add_argument("--n", type=int, default=500, help="held-out judged triplets (default 500)")
    ap.add_argument("--seed", type=int, default=0, help="draw of the held-out pool (default 0)")
    ap.add_argument("--size", type=int, default=128, help="side the metric sees (default 128)")
    ap.add_argument("--branch", choices=BRANCHES, default="pixels",
                    help="what to append: k-pooled pixels, the coordinates the network's truncation drops, or a "
                         "second metric's features (--other)")
    ap.add_argument("--other", help="the second certified metric of --branch metric (hub name or .safetensors)")
    ap.add_argument("--pools", default="1,2,4,8,16", help="pixel pooling factors k (comma list; pixels only)")
    ap.add_argument("--sines", default="0,0.02,0.05,0.1,0.2,0.3,0.5,1", help="sin θ (pixels) or s (rest) values in [0, 1] (comma list)")
    ap.add_argument("--eps", default="36/255,108/255,1", help="certified budgets, l2 in [0, 1] pixels (comma list; 36/255 allowed)")
    ap.add_argument("--n-gain", type=int, default=64, help="references attacked to measure the attack's gain (default 64)")
    ap.add_argument("--out", required=True, help="folder for probe.md, probe.json and probe.png")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from robustsim.evaluate.twoafc import budget_value

    try:
        pools = [int(v) for v in args.pools.split(",")]
        sines = [float(v) for v in args.sines.split(",")]
        eps = [budget_value(v) for v in args.eps.split(",")]
    except (ValueError, ZeroDivisionError) as e:
        ap.error(f"--pools, --sines and --eps take comma lists of numbers ({e})")
    if any(k < 1 or args.size % k for k in pools):
        ap.error(f"every pooling factor must be >= 1 and divide --size {args.size}")
    if any(not 0 <= s <= 1 for s in sines) or any(e <= 0 for e in eps) or args.n < 1 or args.n_gain < 1:
        ap.error("sin θ must lie in [0, 1], budgets must be > 0, --n and --n-gain >= 1")
    if (args.branch == "metric") != bool(args.other):
        ap.error("--other goes with --branch metric, and --branch metric needs --other")
    feats = load_features(args.metric, args.n, args.seed, args.size, not args.quiet, args.branch, args.other)
    rows = frontier(feats, feats["judge"], pools, sines, eps, args.branch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k = min(args.n_gain, len(feats["judge"]))
    metric, refs = feats["metric"], feats["ref"][:k]
    adv = attack_images(metric, refs, eps[-1])
    gains = {"a reference and its distorted images": natural_gain(feats),
             f"a reference and its embedding attack at ε = {eps[-1]:g} ({k} references)": attack_gain(metric, refs, adv)}
    stages = None
    if hasattr(getattr(metric, "encoder", None), "layers"):
        x = feats["ref"].repeat(2, 1, 1, 1)
        stages = {"natural distortions": stage_gains(metric.encoder, x, torch.cat([feats["x0"], feats["x1"]])),
                  "embedding attack": stage_gains(metric.encoder, refs, adv)}
    if args.branch == "rest":
        whole = {**feats, **{g: torch.cat([feats[g], feats[r]], 1)
                             for g, r in (("g_ref", "rest_ref"), ("g0", "rest0"), ("g1", "rest1"))}}
        gains["the same, every coordinate (no truncation)"] = natural_gain(whole)
    write(rows, eps, out, "python scripts/probe_branch.py " + " ".join(sys.argv[1:] if argv is None else argv),
          len(feats["judge"]), gains, args.branch, stages)
    print((out / "probe.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

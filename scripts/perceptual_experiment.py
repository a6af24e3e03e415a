"""Perceptual attacks with real metrics (issue 18, item 5): PPGD / LPA bounded in LPIPS-alex vs R-PPGA / R-LPA
bounded in an R-LPIPS, against the ImageNet EfficientNet-Lite0 classifier on held-out photos.

    python scripts/perceptual_experiment.py --rlpips runs/rlpips_real/train/linf-x0/model.safetensors \
        --out runs/perceptual --n-images 48 --size 128 --bounds 0.000003,0.00001,0.00003,0.0001,0.0003,0.001 --steps 20 --lpa-steps 20
    # (--rlpips also takes a hub name, e.g. a shipped rlpips-alex-<variant>)

Images: square crops of the HELD-OUT photos only (data/catalogue.py: the built-in held-out photos and the held-out
share of --extra folders; never a training photo, never a plasma-workspace wallpaper), gray photos excluded.
Label: the classifier's clean prediction (attack success = the prediction changes while d(x, x_adv) <= bound,
verified with the bound metric's own call). For each bound: success rate of each attack, the mean bound-metric
distance, and the *other* metric's distance of the same adversarial images (how far an R-LPIPS-bounded example
is in LPIPS, and vice versa). The bound each attack needs for 50 % success is interpolated (log-linear) between
the bounds tried. Writes OUT/perceptual.{json,md} and OUT/perceptual_examples.png (clean vs each attack's
example at --figure-bound, with the amplified perturbation).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

ATTACKS = ("ppgd", "lpa", "r-ppga", "r-lpa")
EXCLUDE = ("plasma",)  # never the plasma-workspace-wallpapers photos (rendered, not photographs)


def _floats(s: str) -> List[float]:
    from robustsim.errors import InputError

    out = []
    for part in (p.strip() for p in str(s).split(",")):
        if part:
            try:
                out.append(float(part))
            except ValueError:
                raise InputError(f"not a number: {part!r}") from None
    if not out:
        raise InputError("give at least one bound")
    for v in out:
        if not (v > 0 and math.isfinite(v)):
            raise InputError(f"attack bound must be a positive finite number, got {v:g}")
    return sorted(out)


class Classifier(torch.nn.Module):
    """ImageNet logits of an ``effnet-lite*-cosine`` metric (images in [0, 1] at any size; resized inside)."""

    def __init__(self, effnet):
        super().__init__()
        self.effnet = effnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.effnet.classify(x)


def heldout_sources(extra: Sequence[str]):
    from robustsim.data.catalogue import select_photos

    srcs = [s for s in select_photos("heldout", list(extra) or None, include_gray=False)
            if not any(e in s.name.lower() or e in str(s.path or "").lower() for e in EXCLUDE)]
    assert all(s.split == "heldout" for s in srcs)
    return srcs


def heldout_images(n: int, size: int, extra: Sequence[str], seed: int = 0):
    """n crops (scale 0.4-0.9 of the short side) cycling over the held-out photos; (images, photo names)."""
    from robustsim.data.catalogue import MIN_CROP_STD, item_rng, random_crop

    srcs = heldout_sources(extra)
    imgs, names = [], []
    for i in range(n):
        src = srcs[i % len(srcs)]
        rng = item_rng(seed, i, "perceptual-experiment")
        for _ in range(20):
            crop = random_crop(src.load(), rng, size, (0.4, 0.9))
            if float(crop.std()) >= MIN_CROP_STD:
                break
        imgs.append(crop)
        names.append(src.name)
    return torch.stack(imgs), names


def confident_images(clf, args):
    """``n_images`` held-out crops whose clean top-1 probability is >= ``min_confidence`` (drawn in order).

    Crops the classifier barely decides flip under any perturbation, which says nothing about the bound.
    """
    from robustsim.errors import InputError

    pool = max(args.n_images, 1) * (1 if args.min_confidence <= 0 else 8)
    x, names = heldout_images(pool, args.size, args.extra, args.seed)
    with torch.no_grad():
        p = torch.cat([clf(x[i:i + 16]).softmax(1).max(1).values for i in range(0, x.shape[0], 16)])
    keep = (p >= args.min_confidence).nonzero().flatten()[:args.n_images]
    if keep.numel() == 0:
        raise InputError(f"no held-out crop reaches clean confidence {args.min_confidence:g}; lower --min-confidence")
    return x[keep], [names[int(i)] for i in keep], p[keep]


def bound_for(rates: Dict[float, float], target: float = 0.5) -> Dict[str, Any]:
    """Smallest bound reaching ``target`` success, log-linearly interpolated; below/above the grid flagged."""
    bs = sorted(rates)
    if rates[bs[0]] >= target:
        return {"value": bs[0], "relation": "<="}
    for a, b in zip(bs, bs[1:]):
        ra, rb = rates[a], rates[b]
        if ra < target <= rb:
            t = (target - ra) / (rb - ra)
            return {"value": math.exp(math.log(a) + t * (math.log(b) - math.log(a))), "relation": "="}
    return {"value": bs[-1], "relation": ">"}


def run_attack(name: str, clf, x, y, lpips, rlpips, bound: float, args):
    from robustsim import attacks

    common = dict(seed=args.seed, progress=not args.quiet)
    if name == "ppgd":
        return attacks.ppgd(clf, x, y, bound_metric=lpips, bound=bound, steps=args.steps, cg_steps=args.cg_steps, **common)
    if name == "r-ppga":
        return attacks.r_ppga(clf, x, y, bound_metric=rlpips, bound=bound, steps=args.steps, cg_steps=args.cg_steps, **common)
    if name == "lpa":
        return attacks.lpa(clf, x, y, bound_metric=lpips, bound=bound, steps=args.lpa_steps, rounds=args.lpa_rounds, **common)
    return attacks.r_lpa(clf, x, y, bound_metric=rlpips, bound=bound, steps=args.lpa_steps, rounds=args.lpa_rounds, **common)


def markdown(res: Dict[str, Any]) -> str:
    bounds = res["bounds"]
    lines = [f"{res['n_images']} crops of {len(res['photos'])} held-out photos at {res['size']} px; classifier "
             f"{res['classifier']} (label = its clean prediction); LPIPS bound: lpips-alex; R-LPIPS bound: "
             f"{res['rlpips']}. PPGD/R-PPGA {res['steps']} steps ({res['cg_steps']} CG); LPA/R-LPA "
             f"{res['lpa_steps']} steps × {res['lpa_rounds']} rounds; crops with clean top-1 probability >= "
             f"{res.get('min_confidence', 0):g} (median {res.get('clean_confidence_median', float('nan')):.2f}). "
             f"Success rate in % (prediction changed, verified within the bound).", "",
             "| attack | bound metric | " + " | ".join(f"d ≤ {b:g}" for b in bounds) + " | bound for 50 % |",
             "|---|---|" + "---|" * len(bounds) + "---|"]
    for a in ATTACKS:
        r = res["attacks"].get(a)
        if not r:
            continue
        cells = [f"{100 * r['per_bound'][f'{b:g}']['success']:.0f}" for b in bounds]
        b50 = r["bound_for_50"]
        lines.append(f"| {a.upper()} | {r['metric']} | " + " | ".join(cells) + f" | {b50['relation']} {b50['value']:.3g} |")
    lines += ["", "Mean distance of the successful adversarial examples in the bound metric / in the other metric:", "",
              "| attack | " + " | ".join(f"d ≤ {b:g}" for b in bounds) + " |", "|---|" + "---|" * len(bounds)]
    for a in ATTACKS:
        r = res["attacks"].get(a)
        if not r:
            continue
        cells = []
        for b in bounds:
            pb = r["per_bound"][f"{b:g}"]
            cells.append("-" if pb["mean_d_success"] is None else f"{pb['mean_d_success']:.3g} / {pb['mean_other_d_success']:.3g}")
        lines.append(f"| {a.upper()} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{res['command']}`"]
    return "\n".join(lines) + "\n"


def figure(x, names, examples: Dict[str, Any], bound: float, path: Path, k: int = 4) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cols = ["clean"] + [a for a in ATTACKS if a in examples]
    k = min(k, x.shape[0])
    fig, axes = plt.subplots(2 * k, len(cols), figsize=(2.0 * len(cols), 4.0 * k))
    axes = axes.reshape(2 * k, len(cols))
    for i in range(k):
        for j, c in enumerate(cols):
            top, bot = axes[2 * i, j], axes[2 * i + 1, j]
            if c == "clean":
                img, title, diff = x[i], f"{names[i].split('/')[-1][:16]}\nclass {examples['_labels'][i]}", None
            else:
                e = examples[c]
                img = e["x_adv"][i]
                title = (f"{c.upper()} {'✓' if e['success'][i] else '✗'} → {e['pred'][i]}\nd={e['d'][i]:.2g}, "
                         f"other={e['other_d'][i]:.2g}")
                diff = img - x[i]
            top.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            top.set_title(title, fontsize=7)
            if diff is not None:
                s = float(diff.abs().max()) or 1.0
                bot.imshow((0.5 + 0.5 * diff / s).permute(1, 2, 0).clamp(0, 1).numpy())
                bot.set_title(f"δ ×{0.5 / s:.0f} (ℓ∞ {255 * float(diff.abs().max()):.0f}/255)", fontsize=7)
            for ax in (top, bot):
                ax.axis("off")
    fig.suptitle(f"perceptual attacks on EfficientNet-Lite0 at bound {bound:g}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args) -> Dict[str, Any]:
    import robustsim
    from robustsim.attacks.twoafc import metric_distance

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    clf = Classifier(robustsim.load(args.classifier)).eval()
    clf.requires_grad_(False)
    x, names, conf = confident_images(clf, args)
    lpips = robustsim.load("lpips-alex")
    rlpips = robustsim.load(args.rlpips)
    rlpips.name = Path(args.rlpips).parent.name if str(args.rlpips).endswith(".safetensors") else str(args.rlpips)
    metrics = {"ppgd": lpips, "lpa": lpips, "r-ppga": rlpips, "r-lpa": rlpips}
    with torch.no_grad():
        y = clf(x).argmax(1)
    res: Dict[str, Any] = {"command": args.argv or "python scripts/perceptual_experiment.py " + " ".join(sys.argv[1:]),
                           "n_images": int(x.shape[0]), "size": args.size, "photos": sorted(set(names)),
                           "classifier": args.classifier, "rlpips": str(args.rlpips), "bounds": args.bounds,
                           "steps": args.steps, "cg_steps": args.cg_steps, "lpa_steps": args.lpa_steps,
                           "lpa_rounds": args.lpa_rounds, "seed": args.seed, "min_confidence": args.min_confidence,
                           "clean_confidence_median": float(conf.median()), "attacks": {}}
    fig_bound = args.figure_bound if args.figure_bound is not None else args.bounds[len(args.bounds) // 2]
    examples: Dict[str, Any] = {"_labels": [int(v) for v in y]}
    for a in (v.strip() for v in args.attacks.split(",") if v.strip()):
        if a not in ATTACKS:
            from robustsim.errors import InputError

            raise InputError(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)}")
        m = metrics[a]
        other = rlpips if m is lpips else lpips
        per: Dict[str, Any] = {}
        bounds = list(args.bounds) + ([fig_bound] if fig_bound not in args.bounds else [])
        for b in bounds:
            print(f"[{a}] bound {b:g}", flush=True)
            t = time.perf_counter()
            r = run_attack(a, clf, x, y, lpips, rlpips, b, args)
            with torch.no_grad():
                od = metric_distance(other, x, r.x_adv)
                pred = clf(r.x_adv).argmax(1)
            s = r.success
            entry = {"success": r.success_rate, "n_outside": r.n_outside,
                     "mean_d_success": float(r.distance[s].mean()) if bool(s.any()) else None,
                     "mean_other_d_success": float(od[s].mean()) if bool(s.any()) else None,
                     "seconds": round(time.perf_counter() - t, 1)}
            if b in args.bounds:
                per[f"{b:g}"] = entry
            if b == fig_bound:
                examples[a] = {"x_adv": r.x_adv.detach().cpu(), "success": [bool(v) for v in s], "pred": [int(v) for v in pred],
                               "d": [float(v) for v in r.distance], "other_d": [float(v) for v in od]}
            res["attacks"][a] = {"metric": getattr(m, "name", "") or str(args.rlpips), "per_bound": per}
            (out / "perceptual.json").write_text(json.dumps(res, indent=1))
        res["attacks"][a]["bound_for_50"] = bound_for({float(k): v["success"] for k, v in per.items()})
    res["seconds"] = round(time.perf_counter() - t0, 1)
    fig = figure(x, names, examples, fig_bound, out / "perceptual_examples.png", k=args.figure_images)
    res["figure"] = str(fig) if fig else None
    res["figure_bound"] = fig_bound
    (out / "perceptual.json").write_text(json.dumps(res, indent=1))
    (out / "perceptual.md").write_text(markdown(res))
    print(f"wrote {out / 'perceptual.md'}, {out / 'perceptual.json'}" + (f", {fig}" if fig else ""))
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rlpips", required=True, help="R-LPIPS bound metric: a model.safetensors from training or a hub name")
    ap.add_argument("--out", required=True)
    ap.add_argument("--classifier", default="effnet-lite0-cosine", help="an effnet-lite*-cosine metric (its classify head)")
    ap.add_argument("--extra", action="append", default=[], help="extra photo folder (only its held-out share is used)")
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--min-confidence", type=float, default=0.5,
                    help="keep crops whose clean top-1 probability is at least this (0: every crop)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--bounds", default="0.000003,0.00001,0.00003,0.0001,0.0003,0.001", help="perceptual bounds on d(x, x_adv), > 0")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--steps", type=int, default=20, help="PPGD / R-PPGA steps")
    ap.add_argument("--cg-steps", type=int, default=5)
    ap.add_argument("--lpa-steps", type=int, default=20, help="LPA / R-LPA steps per round")
    ap.add_argument("--lpa-rounds", type=int, default=5)
    ap.add_argument("--figure-bound", type=float, default=None, help="bound of the example figure (default: the middle one)")
    ap.add_argument("--figure-images", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    from robustsim.errors import InputError, WeightsError

    try:
        args = build_parser().parse_args(argv)
        args.argv = None if argv is None else "python scripts/perceptual_experiment.py " + " ".join(argv)
        args.bounds = _floats(args.bounds)
        if args.n_images < 1 or args.size < 16:
            raise InputError("--n-images must be >= 1 and --size >= 16")
        if args.figure_bound is not None:
            _floats(str(args.figure_bound))
        run(args)
        return 0
    except (InputError, WeightsError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The shipped model's card numbers on the held-out judged suite: natural, certified and attacked 2AFC.

    python scripts/model_card_eval.py --out docs/model_card_eval                    # the card (docs/MODELS.md)
    python scripts/model_card_eval.py --metrics lipsim-default --n 60 --n-attack 8 --steps 5 --out /tmp/c

Per metric: agreement with the judges' consensus on ``--n`` held-out judged triplets (64-px windows of
the held-out photos, upsampled as ``evaluate_judged`` does; a metric that is itself a judge is scored
leave-one-out), the certified share at 36/72/108 /255, 0.5 and 1 (certified metrics), and APGD-CE l2
on the reference (``--steps`` iterations, the first ``--n-attack`` triplets) at each ``--eps``. It also bounds what *any* metric can keep under that attack: an attacker who may move the
reference by ε can replace it by the far image whenever ||x_far - ref|| <= ε, after which every metric
with d(x, x) < d(x, y) prefers the far one; the share of attacked triplets with ||x_far - ref|| > ε is the
ceiling (row "upper bound, any metric", dotted in the plot). Every metric sees the triplets at ``--size``
(128: the issue's protocol; a 128-px metric's native size), so one ε is one threat for all of them.
Each finished metric is saved in ``OUT/<metric>.json`` and reused while the settings (and a weights
file's sha256) are unchanged, so an interrupted run resumes; a weights file that is not on this machine
keeps its saved row (settings must still match), so a card can be rebuilt on a fresh clone.
Writes ``OUT/card.md`` (table) and ``OUT/card.png`` (certified share and attacked score vs ε, and natural
agreement against the score at ε = 1).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from robustsim.evaluate.twoafc import budget_value  # noqa: E402 (after the offline switches)

DEFAULT_METRICS = "lipsim-default,lpips-alex,dists"
CERT_EPS = (36 / 255, 72 / 255, 108 / 255, 0.5, 1.0)


def display_name(name: str) -> str:
    """A hub name as is; a weights file by its stem, or by its run folder for a recipe's ``model.safetensors``."""
    if not name.endswith(".safetensors"):
        return name
    p = Path(name)
    return p.parent.name if p.stem == "model" and p.parent.name else p.stem


def result_ident(name: str, ident: dict) -> dict:
    """What a saved result must match to be reused: the run's settings and the weights' sha256, of a weights
    file or of a hub name's pinned files (a retrained ``runs/<recipe>/model.safetensors`` keeps its path, and a
    new ``lipsim-default`` its name, but not their results)."""
    if name.endswith(".safetensors"):
        from robustsim.download import sha256_file

        return {**ident, "weights_sha256": sha256_file(name)}
    from robustsim import hub

    pinned = {k: wf.sha256 for k, wf in hub.model_spec(name).weights.items() if wf.sha256}
    return {**ident, "weights_sha256": pinned} if pinned else ident


def absent(name: str) -> bool:
    """A weights file named but not on this machine (hub names are never absent)."""
    return name.endswith(".safetensors") and not Path(name).is_file()


def saved_result(name: str, saved: dict, want: dict) -> Optional[dict]:
    """The saved result to table for ``name``, or None when it must be (re)evaluated.

    A weights file that is not on this machine (``runs/`` is not in git) keeps its saved row when every setting
    but the sha256 matches, so a card can be rebuilt on a fresh clone; the row's JSON keeps the sha256 it was
    measured with. A file that is present must match its sha256 (``want`` then holds it)."""
    got = saved.get("ident")
    if got == want:
        return saved["result"]
    if got and "weights_sha256" not in want and name.endswith(".safetensors"):
        if {k: v for k, v in got.items() if k != "weights_sha256"} == want:
            print(f"{name}: not on this machine; reusing its saved result (sha256 {got.get('weights_sha256')})",
                  file=sys.stderr)
            return saved["result"]
    return None


def evaluate_one(name: str, pool, args) -> dict:
    from robustsim import load
    from robustsim.evaluate.judged import evaluate_judged
    from robustsim.evaluate.twoafc import AttackSpec

    metric = load(name)
    metric.name = display_name(name)
    spec = AttackSpec("apgd-ce", "l2", args.eps, "ref", args.steps, 1, args.seed)
    t0 = time.perf_counter()
    r = evaluate_judged(metric, pool, args.n, name=metric.name, attacks=[spec], n_attack=args.n_attack,
                        cert_eps=CERT_EPS, batch_size=16, progress=not args.quiet, size=args.size)
    att = r["attacks"][0]
    out = {"metric": metric.name, "source": name, "n": r["n"], "size": r["size"], "leave_out": r["leave_out"],
           "natural": r["natural"]["overall"], "n_attack": att["n"], "natural_on_subset": att["natural_on_subset"],
           "apgd": {str(float(e)): v for e, v in att["eps"].items()}, "seconds": round(time.perf_counter() - t0, 1)}
    cert = r.get("certified") or {}
    out["certified"] = {k: v["overall"] for k, v in cert.get("at", {}).items()}
    return out


def attack_ceiling(pool, args, side: int = 128) -> dict:
    """The most any metric can keep of the attacked triplets at each ε: the share whose far image lies
    beyond ε of the reference (||x_far - ref|| > ε at ``side`` px); the others are lost to ref := x_far.

    Labels: the five-judge consensus (the suite of a non-judge metric such as lipsim-default)."""
    from robustsim.evaluate.judged import _resize

    suite = pool.suite(args.n)
    k = min(len(suite), args.n_attack)
    far = []
    for i in range(k):
        ref, x0, x1, label, _ = suite[i]
        x_far = x0 if label == 1 else x1
        far.append(float((_resize(x_far, side) - _resize(ref, side)).norm()))
    return {"metric": "upper bound, any metric", "n": len(suite), "n_attack": k, "natural": 1.0, "natural_on_subset": 1.0,
            "apgd": {str(float(e)): sum(f > e for f in far) / k for e in args.eps}, "certified": {}, "bound": True}


def sampling_note(n: int, n_attack: int) -> str:
    """How far a share may move by the draw of triplets alone: one binomial standard error at a share of 50%
    (its largest), for the natural column (n) and the attacked ones (n_attack), in points."""
    where = (f"at n = {n} (every column)" if n_attack == n else
             f"at n = {n} and ±{50 / n_attack ** 0.5:.1f} at n = {n_attack} (attacked columns)")
    return (f"One standard error of a share is at most ±{50 / n ** 0.5:.1f} points {where}: read differences "
            "smaller than about twice that as noise.")


def table(rows, eps, cert_keys) -> str:
    head = (["metric", "natural", "natural (attacked subset)"] + [f"APGD ε={e:g}" for e in eps]
            + [f"certified {k}" for k in cert_keys])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        nat = "—" if r.get("bound") else f"{100 * r['natural']:.1f}%"
        cells = [r["metric"], nat, "—" if r.get("bound") else f"{100 * r['natural_on_subset']:.1f}%"]
        cells += [f"{100 * r['apgd'][str(float(e))]:.1f}%" for e in eps]
        cells += [f"{100 * r['certified'][k]:.1f}%" if k in r["certified"] else "—" for k in cert_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_names(names: List[str], curves: Optional[str]) -> List[str]:
    """Which metrics the left panel draws: ``curves`` (comma-separated, as in --metrics) when given, else all
    when there are at most 6, else the first 3 and every metric without a certificate (the baselines) — two
    curves per metric, so a card of 17 metrics would bury the ones it is about."""
    if curves:
        chosen = [c for c in curves.split(",") if c]
        unknown = [c for c in chosen if c not in names]
        if unknown:
            raise ValueError(f"--curves names metrics not in --metrics: {', '.join(unknown)}")
        return [display_name(c) for c in chosen]
    if len(names) <= 6:
        return [display_name(n) for n in names]
    return [display_name(n) for n in names[:3]] + [display_name(n) for n in names[3:] if not is_certified(n)]


def is_certified(name: str) -> bool:
    """A LipSim weights file or a certified hub model (its curves include the certified share)."""
    if name.endswith(".safetensors"):
        return True
    from robustsim import hub
    from robustsim.errors import InputError

    try:
        return bool(hub.model_spec(name).certified)
    except InputError:  # not a hub name (pixel-l2): a baseline; a typo fails later with the evaluation's error
        return False


def plot(rows, path: Path, trade_eps: float = 1.0, curves: Optional[List[str]] = None) -> List[str]:
    """Left: certified share and attacked score vs ε for the metrics in ``curves`` (default: all). Right: the
    trade-off for every metric, natural agreement against the score under APGD at ``trade_eps`` (up and to the
    right is better). Returns the left panel's legend labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, tr) = plt.subplots(1, 2, figsize=(12.0, 4.6), gridspec_kw={"width_ratios": [1.4, 1]})
    key = str(float(trade_eps))
    for i, r in enumerate(rows):
        colour = f"C{i}"
        if r.get("bound"):
            ax.plot([float(e) for e in r["apgd"]], [100 * v for v in r["apgd"].values()], ":", color="black",
                    label="upper bound under the attack, any metric")
            continue
        drawn = curves is None or r["metric"] in curves
        xs = [0.0] + [float(e) for e in r["apgd"]]
        ys = [100 * r["natural_on_subset"]] + [100 * v for v in r["apgd"].values()]
        if drawn:
            ax.plot(xs, ys, "o--", color=colour, ms=4, label=f"{r['metric']}: APGD-CE")
        if r["certified"] and drawn:
            ce = sorted((budget_value(k), v) for k, v in r["certified"].items())
            ax.plot([0.0] + [e for e, _ in ce], [100 * r["natural"]] + [100 * v for _, v in ce], "-", color=colour,
                    lw=2, label=f"{r['metric']}: certified")
        if key in r["apgd"]:
            tr.plot(100 * r["natural"], 100 * r["apgd"][key], "o" if r["certified"] else "s", color=colour, ms=7)
            tr.annotate(r["metric"], (100 * r["natural"], 100 * r["apgd"][key]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    ax.set_xlabel("ℓ2 budget ε on the reference ([0, 1] pixels, 128×128)")
    ax.set_ylabel("2AFC agreement with the judges (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    for r in rows:
        if r.get("bound") and key in r["apgd"]:
            tr.axhline(100 * r["apgd"][key], ls=":", color="black", lw=1)
            tr.text(tr.get_xlim()[0], 100 * r["apgd"][key], " upper bound, any metric", va="bottom", fontsize=7)
    tr.set_xlabel("natural agreement with the judges (%)")
    tr.set_ylabel(f"kept under APGD-CE ℓ2 ε = {trade_eps:g} (%)")
    tr.set_title("trade-off (circles: certified metrics)", fontsize=9)
    tr.set_ylim(0, 100)
    tr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    labels = ax.get_legend_handles_labels()[1]
    plt.close(fig)
    return labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default=DEFAULT_METRICS, help="comma-separated hub names or .safetensors files")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--n-attack", type=int, default=50)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eps", default="0.25,0.5,1,2", help="APGD-CE l2 budgets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128, help="side every metric sees (attack budgets are at this size)")
    ap.add_argument("--out", default="docs/model_card_eval")
    ap.add_argument("--curves", help="comma-separated metrics (as in --metrics) whose curves vs ε the plot draws "
                    "(default: all up to 6, else the first 3 and the uncertified baselines)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    args.eps = [float(e) for e in args.eps.split(",")]
    if args.n <= 0 or args.n_attack <= 0 or args.steps <= 0 or args.size <= 0 or any(e <= 0 for e in args.eps):
        print("error: --n, --n-attack, --steps, --size and every --eps must be positive", file=sys.stderr)
        return 2
    from robustsim.data.judged import JudgedPool

    out = Path(args.out)
    names = [m for m in args.metrics.split(",") if m]
    try:
        curves = curve_names(names, args.curves)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lost = [m for m in names if absent(m) and not (out / f"{display_name(m)}.json").is_file()]
    if lost:  # before the pool is labelled: a typo should not cost minutes
        print(f"error: no such weights file and no saved result in {out}: {', '.join(lost)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    pool = JudgedPool(size=64, split="heldout", seed=args.seed, per_window=2, progress=not args.quiet)
    ident = {"n": args.n, "n_attack": args.n_attack, "steps": args.steps, "eps": args.eps, "seed": args.seed,
             "size": args.size, "pool": pool.cache_key}
    rows = []
    for name in names:
        saved = out / f"{display_name(name)}.json"
        got = json.loads(saved.read_text()) if saved.is_file() else {}
        missing = absent(name)
        want = ident if missing else result_ident(name, ident)
        r = saved_result(name, got, want)
        if r is None and missing:
            print(f"error: {name} does not exist and {saved} holds no result for these settings", file=sys.stderr)
            return 2
        if r is None:
            r = evaluate_one(name, pool, args)
            saved.write_text(json.dumps({"ident": want, "result": r}, indent=1))
        rows.append(r)
        print(f"{name}: natural {100 * r['natural']:.1f}%  APGD {', '.join(f'{e}: {100 * v:.0f}%' for e, v in r['apgd'].items())}"
              f"  certified {', '.join(f'{k}: {100 * v:.1f}%' for k, v in r['certified'].items()) or '—'}"
              f"  ({r['seconds']} s)", flush=True)
    rows.append(attack_ceiling(pool, args, args.size))
    k_attack = rows[-1]["n_attack"]
    cert_keys = sorted({k for r in rows for k in r["certified"]},
                       key=budget_value)
    md = (f"Held-out judged suite (labels = consensus of the human-calibrated judges, not people), n = {args.n}; "
          f"APGD-CE l2 on the reference, {args.steps} iterations, first {args.n_attack} triplets, "
          f"every metric at {args.size}×{args.size}. {sampling_note(args.n, k_attack)}\n\n"
          + table(rows, args.eps, cert_keys) + "\n\n`python scripts/model_card_eval.py " + " ".join(sys.argv[1:]) + "`\n")
    (out / "card.md").write_text(md)
    plot(rows, out / "card.png", curves=curves)
    print(f"wrote {out / 'card.md'} and {out / 'card.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

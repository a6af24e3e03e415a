"""Evaluate a distilled LipSim student against its teacher on held-out photos (the numbers of docs/MODELS.md).

    python scripts/eval_shipped.py --student lipsim-default --teacher effnet-lite0-cosine \
        --extra work_data/photos --n 400 --n-attack 50 --steps 50 --out docs/shipped_eval.json \
        --md results.md --plot docs/shipped_eval.png
    python scripts/eval_shipped.py --replot docs/shipped_eval.json --plot docs/shipped_eval.png   # redraw only

Protocols (all on held-out photos only; images at the student's native size):
* teacher agreement: TeacherSuite triplets (two distortions of different kinds) labelled by the teacher;
  the student's natural 2AFC score is its agreement with the teacher's decisions;
* ordering: OrderingSuite accuracy (weaker distortion is closer) for student and teacher;
* attacked: APGD-CE, l2, reference perturbed, at each --eps, on the first --n-attack triplets of both
  suites, for student and teacher;
* certified: the student's sound certified 2AFC accuracy at 36/72/108 /255 (and the curve).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="lipsim-default")
    ap.add_argument("--teacher", default="effnet-lite0-cosine")
    ap.add_argument("--extra", action="append", default=[], help="extra photo folder (its held-out share is used)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-attack", type=int, default=60)
    ap.add_argument("--eps", default="0.5,1,2,3")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON results (rewritten after every row)")
    ap.add_argument("--md", default=None, help="also write the results as a Markdown table here")
    ap.add_argument("--reuse-teacher", default=None,
                    help="JSON of an earlier run with the same protocol: copy its teacher rows instead of recomputing")
    ap.add_argument("--labels-cache", default=None, help="cache folder for the teacher's labels (TeacherSuite cache_dir)")
    ap.add_argument("--plot", default=None, help="also draw certified and attacked accuracy vs ε (PNG) here")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only redraw --plot (and --md) from the JSON of an earlier run; nothing is evaluated")
    args = ap.parse_args()
    if args.replot:
        out = json.loads(Path(args.replot).read_text())
        if not (args.plot or args.md):
            raise SystemExit("--replot needs --plot and/or --md")
        if args.plot:
            print(f"wrote {plot(out, args.plot)}")
        if args.md:
            Path(args.md).write_text(markdown(out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    import robustsim
    from robustsim.data.photos import OrderingSuite, TeacherSuite
    from robustsim.evaluate.twoafc import AttackSpec, evaluate_2afc

    student = robustsim.load(args.student)
    teacher = robustsim.load(args.teacher)
    size = student.input_size[0]
    eps = [float(e) for e in args.eps.split(",")]
    t0 = time.perf_counter()
    suites = {
        "teacher-labelled": TeacherSuite(teacher, n=args.n, size=size, split="heldout", seed=args.seed,
                                         extra_dirs=args.extra, cache_dir=args.labels_cache),
        "ordering": OrderingSuite(n=args.n, size=size, split="heldout", seed=args.seed, extra_dirs=args.extra),
    }
    attack = AttackSpec("apgd-ce", "l2", eps, "ref", args.steps)
    out = {"student": args.student, "teacher": args.teacher, "size": size, "n": args.n, "n_attack": args.n_attack,
           "steps": args.steps, "eps": eps, "extra": args.extra, "seed": args.seed, "results": {}}
    reused = {}
    if args.reuse_teacher:
        old = json.loads(Path(args.reuse_teacher).read_text())
        same = ("teacher", "size", "n", "n_attack", "steps", "eps", "extra", "seed")
        diff = [k for k in same if old.get(k) != out[k]]
        if diff:
            raise SystemExit(f"--reuse-teacher: {args.reuse_teacher} used another protocol ({', '.join(diff)} differ)")
        reused = {k: v for k, v in old["results"].items() if k.endswith("/teacher")}
    for sname, suite in suites.items():
        for role, m in (("student", student), ("teacher", teacher)):
            if f"{sname}/{role}" in reused:
                out["results"][f"{sname}/{role}"] = dict(reused[f"{sname}/{role}"], reused_from=args.reuse_teacher)
                continue
            nat = evaluate_2afc(m, suite, batch_size=16, certified=bool(m.certified), progress=True)
            att = evaluate_2afc(m, suite, batch_size=16, attack=attack, limit=args.n_attack, progress=True)
            row = {"natural": nat["natural"]["overall"], "natural_on_attacked_subset": att["natural"]["overall"],
                   "attacked": {str(k): v["overall"] for k, v in att["attacked"]["eps"].items()}}
            if m.certified:
                row["certified"] = nat["certified"]
            out["results"][f"{sname}/{role}"] = row
            print(sname, role, json.dumps(row)[:400], flush=True)
            if args.out:  # partial results survive an interruption
                Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    if args.md:
        Path(args.md).write_text(markdown(out))
        print(f"wrote {args.md}")
    if args.plot:
        print(f"wrote {plot(out, args.plot)}")


def plot(out: dict, path) -> Path:
    """One panel per suite: the student's certified accuracy vs ε (sound radius, and the paper's formula)
    with the attacked accuracy of student and teacher as points; certified must lie below attacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = [s for s in ("teacher-labelled", "ordering") if f"{s}/student" in out["results"]]
    fig, axes = plt.subplots(1, len(suites), figsize=(5.2 * len(suites), 3.8), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        st, te = out["results"][f"{suite}/student"], out["results"].get(f"{suite}/teacher")
        if st.get("certified"):
            c = st["certified"]
            ax.plot(c["eps"], [100 * v for v in c["curve"]], color="C0", label=f"{out['student']} certified")
            if c.get("paper_curve"):
                ax.plot(c["eps"], [100 * v for v in c["paper_curve"]], color="C0", ls="--", lw=0.9,
                        label="  (LipSim paper's radius)")
        for row, name, style in ((st, out["student"], dict(color="C0", marker="o")),
                                 (te, out["teacher"], dict(color="C3", marker="x"))):
            if row:
                eps = [0.0] + [float(e) for e in row["attacked"]]
                acc = [100 * row["natural_on_attacked_subset"]] + [100 * v for v in row["attacked"].values()]
                ax.plot(eps, acc, ls=":", label=f"{name} under APGD-CE ({out['steps']} it.)", **style)
        ax.set_title(f"{suite} ({out['n']} held-out triplets)", fontsize=10)
        ax.set_xlabel("l2 budget ε on the reference ([0, 1] pixels, 128×128)")
        ax.set_ylabel("2AFC score (%)")
        ax.set_xlim(0, max(float(e) for e in out["eps"]) * 1.02)
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(out: dict) -> str:
    """The results as one table per suite: natural, attacked at each ε, certified at 36/72/108 /255."""
    eps = [str(e).rstrip("0").rstrip(".") if "." in str(e) else str(e) for e in out["eps"]]
    lines = []
    for suite in ("teacher-labelled", "ordering"):
        lines += [f"**{suite}** ({out['n']} held-out triplets; attacked: first {out['n_attack']}, "
                  f"APGD-CE l2 on the reference, {out['steps']} iterations)", "",
                  "| model | natural | natural (attacked subset) | " + " | ".join(f"APGD ε={e}" for e in eps)
                  + " | certified 36/255 | 72/255 | 108/255 |",
                  "|---|---:|---:|" + "---:|" * len(eps) + "---:|---:|---:|"]
        for role in ("student", "teacher"):
            r = out["results"].get(f"{suite}/{role}")
            if r is None:
                continue
            name = out[role]
            att = [f"{100 * r['attacked'][k]:.1f}%" for k in r["attacked"]]
            cert = ([f"{100 * r['certified']['at'][k]['overall']:.1f}%" for k in ("36/255", "72/255", "108/255")]
                    if r.get("certified") else ["—"] * 3)
            lines.append(f"| {name} | {100 * r['natural']:.1f}% | {100 * r['natural_on_attacked_subset']:.1f}% | "
                         + " | ".join(att) + " | " + " | ".join(cert) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Compare LipSim students of one teacher on held-out photos: the table of docs/TRAINING.md's experiment.

    python scripts/compare_students.py STUDENT [STUDENT ...] --extra work_data/photos \
        [--teacher effnet-lite0-cosine] [--n 400] [--n-attack 40] [--steps 10] [--json out.json]

STUDENT is anything ``robustsim.load`` accepts (a hub name or a saved .safetensors). Per student, on
held-out photos only, at the student's input size:

* fidelity: mean cosine between g(x) and the distillation target (the teacher's features, see
  ``train.distill.teacher_targets``) on the references of the ordering suite, and median ||g(x)||;
* agreement with the teacher's 2AFC decisions (TeacherSuite) and ordering accuracy, natural;
* APGD-CE l2 ε = 1 on the reference (first --n-attack triplets of each suite, --steps iterations);
* sound certified 2AFC at 36/72/108 /255.

It is the cheap comparison used to choose between checkpoints; ``scripts/eval_shipped.py`` is the full
protocol of the model card.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")


def fidelity(student, teacher, suite, n: int, batch: int = 32) -> dict:
    """Mean cosine of g(x) to the teacher's distillation target, and median ||g(x)||, on ``n`` references."""
    from robustsim.train.distill import teacher_targets

    cos, norms = [], []
    with torch.no_grad():
        for start in range(0, n, batch):
            x = torch.stack([suite[i][0] for i in range(start, min(n, start + batch))])
            g = student.features(x)
            t = teacher_targets(teacher, x)
            cos.append(torch.nn.functional.cosine_similarity(g, t, dim=1))
            norms.append(g.norm(dim=1))
    return {"cosine_to_teacher": float(torch.cat(cos).mean()), "median_norm": float(torch.cat(norms).median())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", nargs="+")
    ap.add_argument("--teacher", default="effnet-lite0-cosine")
    ap.add_argument("--extra", action="append", default=[], help="extra photo folder (its held-out share is used)")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--n-attack", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels-cache", default=None, help="TeacherSuite cache_dir (labels are reused across runs)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)

    import robustsim
    from robustsim.data.photos import OrderingSuite, TeacherSuite
    from robustsim.evaluate.twoafc import AttackSpec, evaluate_2afc

    teacher = robustsim.load(args.teacher)
    students = [(s, robustsim.load(s)) for s in args.students]
    sizes = {m.input_size[0] for _, m in students}
    if len(sizes) != 1:
        raise SystemExit(f"students have different input sizes {sorted(sizes)}; compare students of one size")
    size = sizes.pop()
    suites = {
        "teacher-labelled": TeacherSuite(teacher, n=args.n, size=size, split="heldout", seed=args.seed,
                                         extra_dirs=args.extra, cache_dir=args.labels_cache),
        "ordering": OrderingSuite(n=args.n, size=size, split="heldout", seed=args.seed, extra_dirs=args.extra),
    }
    attack = AttackSpec("apgd-ce", "l2", [args.eps], "ref", args.steps)
    rows = []
    for name, m in students:
        row = {"student": name, **fidelity(m, teacher, suites["ordering"], min(args.n, 128))}
        for sname, suite in suites.items():
            nat = evaluate_2afc(m, suite, batch_size=32, certified=bool(m.certified), progress=False)
            att = evaluate_2afc(m, suite, batch_size=20, attack=attack, limit=args.n_attack, progress=False)
            row[sname] = {"natural": nat["natural"]["overall"],
                          "attacked": next(iter(att["attacked"]["eps"].values()))["overall"],
                          "certified": {k: v["overall"] for k, v in nat["certified"]["at"].items()} if m.certified else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(markdown(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    return 0


def markdown(rows, args) -> str:
    head = (f"| student | cos to teacher | median ‖g‖ | agreement | ordering | APGD ε={args.eps:g} "
            f"(agreement / ordering) | certified 36 / 72 / 108 /255 (teacher-labelled) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, o = r["teacher-labelled"], r["ordering"]
        cert = " / ".join(f"{100 * v:.1f}%" for v in t["certified"].values()) if t["certified"] else "—"
        lines.append(f"| {r['student']} | {r['cosine_to_teacher']:.3f} | {r['median_norm']:.2f} | "
                     f"{100 * t['natural']:.1f}% | {100 * o['natural']:.1f}% | "
                     f"{100 * t['attacked']:.1f}% / {100 * o['attacked']:.1f}% | {cert} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

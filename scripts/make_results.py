#!/usr/bin/env python
"""Regenerate docs/RESULTS.md (+ RESULTS.json, plots): the judged 2AFC suite as the headline.

    python scripts/make_results.py                         # the full run (see docs/RESULTS.md for its time)
    python scripts/make_results.py --tiny --out /tmp/r     # a minute-long check of the whole pipeline

Judges' distances are cached (<robustsim cache>/judged), every metric's batches live under --run-dir
and each finished metric is saved there: an interrupted run resumes, a finished one only rewrites the
report. Photos: the bundled held-out photos (4 colour photos, at most ~640 consensus triplets), so the run
works on a fresh clone and reuses the judge-label cache; --extra-dir work_data/photos adds the Debian
photos of scripts/fetch_photos.sh (a different pool: its labels are computed afresh, ~1 h more on 2 cores). The metric list defaults to
robustsim.evaluate.results.default_metrics() (R-LPIPS checkpoints are included when their weights are
present); --metrics also takes saved .safetensors files. Same as `robustsim eval --suite judged`.
"""
import argparse
import os
import sys

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from robustsim.errors import RobustsimError
    from robustsim.evaluate.results import ResultsPlan, default_metrics, run_judged_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs")
    ap.add_argument("--metrics", help="comma-separated hub names or .safetensors files (default: all offline metrics)")
    ap.add_argument("--run-dir", default="work_data/results_judged",
                    help="per-batch results: an interrupted run resumes from here (delete it to start afresh)")
    ap.add_argument("--extra-dir", action="append", default=[],
                    help="photo folder added to the bundled photos (repeatable; default: none)")
    ap.add_argument("--n", type=int, help="judged triplets per metric (default 500)")
    ap.add_argument("--n-attack", type=int, help="attacked triplets (default 24)")
    ap.add_argument("--steps", type=int, help="attack iterations for APGD-CE l2 and PGD linf (default 10)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--tiny", action="store_true", help="seconds-per-metric sizes (to check the pipeline)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    extra = list(args.extra_dir)
    os.environ.pop("ROBUSTSIM_PHOTOS", None)  # the photo set is what the command line says, nothing implicit
    plan = ResultsPlan.tiny(extra_dirs=extra) if args.tiny else ResultsPlan(extra_dirs=extra)
    if args.n:
        plan.n = args.n
    if args.n_attack:
        plan.n_attack = args.n_attack
    if args.steps:
        plan.l2_steps = plan.linf_steps = args.steps
    cmd = "python scripts/make_results.py" + " ".join([""] + sys.argv[1:])
    try:
        metrics = [m for m in args.metrics.split(",") if m] if args.metrics else default_metrics()
        out = run_judged_results(args.out, metrics=metrics, plan=plan, run_dir=args.run_dir, device=args.device,
                                 progress=not args.no_progress, command=cmd)
    except RobustsimError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for r in out["results"]:
        print(f"{r['metric']}: judged natural {100 * r['natural']['overall']:.1f}% (n={r['n']}, {r['seconds']} s)")
    print(f"wrote {out['paths']['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

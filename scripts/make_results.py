#!/usr/bin/env python
"""Regenerate docs/RESULTS.md (+ RESULTS.json, PNG plots) from the offline real-photo suites.

    python scripts/make_results.py [--out docs] [--metrics effnet-lite0-cosine,lpips-alex,...]

Same as `robustsim eval --suite offline --out docs`. The metric list is
robustsim.evaluate.offline.RESULTS_METRICS (add "lipsim-default" there once the shipped model exists);
sizes are robustsim.evaluate.offline.OfflinePlan. Deterministic on CPU.
"""
import argparse
import os
import sys

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")


def main() -> int:
    from robustsim.evaluate.offline import RESULTS_METRICS, run_offline_suite

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs")
    ap.add_argument("--metrics", default=",".join(RESULTS_METRICS))
    ap.add_argument("--run-dir", default="work_data/results_run",
                    help="per-batch results: an interrupted run resumes from here (delete it to start afresh)")
    args = ap.parse_args()
    out = run_offline_suite(args.out, metrics=[m for m in args.metrics.split(",") if m], run_dir=args.run_dir)
    for r in out["results"]:
        print(f"{r['metric']}: natural {100 * r['natural']['overall']:.1f}% ({r['seconds']} s)")
    print(f"wrote {out['paths']['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

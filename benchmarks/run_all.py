#!/usr/bin/env python
"""Run every benchmark with the arguments docs/BENCHMARKS.md reports (``make bench``).

    python benchmarks/run_all.py [--only lpips,shipped] [--list]

Each benchmark runs in its own process (fresh thread pools, no cross-talk) and prints its table; a
failing benchmark is reported at the end and makes the exit code 1. Expect tens of minutes on 2 CPU
cores; ``--only`` picks a subset by short name.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# short name -> arguments (the commands of docs/BENCHMARKS.md)
BENCHMARKS = {
    "lpips": ["bench_lpips.py", "--reps", "9"],
    "shipped": ["bench_shipped.py", "--size", "128", "--n", "64", "--repeats", "3"],
    "sll": ["bench_sll.py", "--threads", "1", "--reps", "3"],
    "certify": ["bench_certify.py", "--n-run", "256", "--repeats", "3"],
    "eval": ["bench_eval.py", "--n", "32", "--repeats", "3"],
    "apgd": ["bench_apgd.py", "--n", "4"],
    "dreamsim": ["bench_dreamsim.py", "--pairs", "1", "--iters", "2", "--threads", "1", "--grad"],
    "train": ["bench_train.py", "--quick"],
    "retrieval": ["bench_retrieval.py", "--n", "100000", "--dim", "256", "--queries", "1000",
                  "--cert-queries", "20", "--images", "32"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated short names (default: all)")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / BENCHMARKS[name][0]), *BENCHMARKS[name][1:]]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        if args.list:
            continue
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

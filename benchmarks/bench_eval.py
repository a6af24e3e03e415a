#!/usr/bin/env python
"""Throughput of 2AFC evaluation on CPU: natural vs certified, and ours vs the naive distance calls.

    python benchmarks/bench_eval.py [--n 32] [--repeats 3] [--threads 2]

Rows: LPIPS-alex (64×64, random trunk: no embedding, so no certificate exists), EfficientNet-Lite0
cosine (224×224; the "certified" row runs the certificate code on it with lipschitz=1 to measure the
*cost* of certifying from the same forward pass -- its radii mean nothing), LipSim-CPU (128×128,
random weights; a real certified metric). Data are pre-generated tensors (no image decoding timed).
Reference = the naive evaluation: metric(ref, x0) and metric(ref, x1) as two calls.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402


class Tensors:
    def __init__(self, ref, x0, x1, lab, judge):
        self.t = (ref, x0, x1, lab, judge)

    def __len__(self):
        return self.t[0].shape[0]

    def __getitem__(self, i):
        return tuple(t[i] if k < 3 else t[i].item() for k, t in enumerate(self.t))

    def group(self, i):
        return "all"


def best_time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from robustsim.data.photos import OrderingSuite
    from robustsim.evaluate.offline import OFFLINE_METRICS
    from robustsim.evaluate.twoafc import evaluate_2afc

    print(f"{'metric':<28} {'size':>4} {'naive t/s':>10} {'natural t/s':>12} {'certified t/s':>14} "
          f"{'cert/natural cost':>18} {'natural speed-up vs naive':>26}")
    for name in ("lpips-alex", "effnet-lite0-cosine", "lipsim-random"):
        metric, note, size = OFFLINE_METRICS[name]()
        ds = Tensors(*OrderingSuite(n=args.n, size=size, seed=0).tensors())
        ref, x0, x1 = ds.t[:3]

        def naive():
            with torch.no_grad():
                for s in range(0, args.n, args.batch_size):
                    sl = slice(s, s + args.batch_size)
                    metric(ref[sl], x0[sl])
                    metric(ref[sl], x1[sl])

        def natural():
            evaluate_2afc(metric, ds, args.batch_size, progress=False)

        cmetric = metric
        if not metric.certified and getattr(metric, "has_embedding", False):
            cmetric = copy.copy(metric)  # cost-only: certificate code on a non-Lipschitz model
            cmetric.certified, cmetric.lipschitz = True, 1.0

        def certified():
            evaluate_2afc(cmetric, ds, args.batch_size, certified=True, progress=False)

        natural()  # warm-up
        t_naive = best_time(naive, args.repeats)
        t_nat = best_time(natural, args.repeats)
        if cmetric.certified:
            t_cert = best_time(certified, args.repeats)
            cert = f"{args.n / t_cert:14.2f} {t_cert / t_nat:17.2f}x"
        else:
            cert = f"{'n/a':>14} {'n/a (no embedding)':>18}"
        label = f"{name} ({note})"[:28]
        print(f"{label:<28} {size:>4} {args.n / t_naive:10.2f} {args.n / t_nat:12.2f} {cert} {t_naive / t_nat:25.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

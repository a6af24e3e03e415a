#!/usr/bin/env python
"""Throughput of 2AFC evaluation on CPU: natural vs certified, and ours vs the naive distance calls.

    python benchmarks/bench_eval.py [--n 32] [--repeats 3] [--threads 2]

Rows: LPIPS-alex (64×64, random trunk: no embedding, so no certificate exists), EfficientNet-Lite0
cosine (224×224; not Lipschitz, no certificate), LipSim-CPU (128×128, random weights; a real certified
metric), and with ``--shipped`` the shipped lipsim-default. Data are pre-generated tensors (no image decoding timed).
Reference = the naive evaluation: metric(ref, x0) and metric(ref, x1) as two calls.

Certificate modes (issue 19), timed with batched ``certify.two_afc`` calls, as multiples of the natural
evaluation: ``float64`` (the default: the three embeddings recomputed in float64 with a proven bound) and
``float32`` (the model's own pass with the proven worst-case bound covering every float32 evaluation).
``--shipped`` adds the shipped model.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from timing import best_of  # noqa: E402


class Tensors:
    def __init__(self, ref, x0, x1, lab, judge):
        self.t = (ref, x0, x1, lab, judge)

    def __len__(self):
        return self.t[0].shape[0]

    def __getitem__(self, i):
        return tuple(t[i] if k < 3 else t[i].item() for k, t in enumerate(self.t))

    def group(self, i):
        return "all"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shipped", action="store_true", help="also time the shipped lipsim-default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from robustsim.data.photos import OrderingSuite
    from robustsim.evaluate.offline import OFFLINE_METRICS
    from robustsim.evaluate.twoafc import evaluate_2afc

    from robustsim import certify

    print(f"{'metric':<28} {'size':>4} {'naive t/s':>10} {'natural t/s':>12} {'certified t/s':>14} "
          f"{'cert/natural cost':>18} {'natural speed-up vs naive':>26}")
    modes = []
    names = ["lpips-alex", "effnet-lite0-cosine", "lipsim-random"] + (["lipsim-default"] if args.shipped else [])
    for name in names:
        if name == "lipsim-default":
            import robustsim

            metric, note, size = robustsim.load("lipsim-default"), "shipped", 128
        else:
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

        cmetric = metric  # (non-Lipschitz metrics: no certificate; a "cost-only" row would now time a float64 copy)

        def certified():
            evaluate_2afc(cmetric, ds, args.batch_size, certified=True, progress=False)

        natural()  # warm-up
        t_naive = best_of(naive, args.repeats)
        t_nat = best_of(natural, args.repeats)
        if cmetric.certified:
            t_cert = best_of(certified, args.repeats)
            cert = f"{args.n / t_cert:14.2f} {t_cert / t_nat:17.2f}x"
        else:
            cert = f"{'n/a':>14} {'n/a (not certified)':>18}"
        label = f"{name} ({note})"[:28]
        print(f"{label:<28} {size:>4} {args.n / t_naive:10.2f} {args.n / t_nat:12.2f} {cert} {t_naive / t_nat:25.2f}x")
        if metric.certified:
            row = [label]
            for mode in (None, "float32"):
                def run(mode=mode):
                    for s in range(0, args.n, args.batch_size):
                        sl = slice(s, s + args.batch_size)
                        certify.two_afc(metric, ref[sl], x0[sl], x1[sl], float_error=mode)
                row.append(best_of(run, args.repeats) / t_nat)
            c64 = certify.two_afc(metric, ref, x0, x1)
            c32 = certify.two_afc(metric, ref, x0, x1, float_error="float32")
            row += [float((c64.float_error / c64.gnorm).median()), float((c32.float_error / c32.gnorm).median()),
                    float((c64.radius > 0).float().mean()), float((c32.radius > 0).float().mean())]
            modes.append(row)
    if modes:
        print(f"\n{'certified metric':<28} {'float64 (default)':>18} {'float32 proven':>15} "
              f"{'err/G f64':>10} {'err/G f32':>10} {'>0 f64':>7} {'>0 f32':>7}")
        for r in modes:
            print(f"{r[0]:<28} {r[1]:17.2f}x {r[2]:14.2f}x {r[3]:10.1e} {r[4]:10.1e} {r[5]:7.2f} {r[6]:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

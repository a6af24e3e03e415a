#!/usr/bin/env python
"""Throughput of the shipped certified metric vs LPIPS-AlexNet at the same input size (CPU).

    python benchmarks/bench_shipped.py [--size 128] [--batch 16] [--n 64] [--repeats 3] [--threads 2]

Rows (pairs per second, pre-generated images, no decoding timed):
* ``lipsim-default`` distance + certificate: one forward pass per image and the certified distance
  interval at ε = 36/255 (``certify.distance_interval``, which also returns the distance);
* ``lipsim-default`` distance only;
* ``lpips-alex`` distance (random trunk: same convolution work as the ImageNet trunk, which cannot be
  downloaded here), v0.1 heads.
The ratio (ours / LPIPS) is measured in the same run; read it, not the absolute numbers, on a busy machine.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")

import torch  # noqa: E402


def pairs_per_second(fn, x: torch.Tensor, y: torch.Tensor, batch: int, repeats: int) -> float:
    """Best of ``repeats`` passes over all pairs, in batches (one warm-up pass first)."""
    def run() -> None:
        for i in range(0, x.shape[0], batch):
            fn(x[i:i + batch], y[i:i + batch])

    with torch.no_grad():
        run()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
    return x.shape[0] / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n", type=int, default=64, help="pairs per pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default="lipsim-default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import robustsim
    from robustsim import certify

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, args.size, args.size, generator=g)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = robustsim.load(args.model).eval()
    lpips = robustsim.load("lpips-alex", pretrained_trunk=False, seed=0).eval()
    eps = 36 / 255

    rows = [
        (f"{args.model} distance + certificate (eps 36/255)",
         pairs_per_second(lambda a, b: certify.distance_interval(ours, a, b, eps), x, y, args.batch, args.repeats)),
        (f"{args.model} distance", pairs_per_second(ours, x, y, args.batch, args.repeats)),
        ("lpips-alex distance", pairs_per_second(lpips, x, y, args.batch, args.repeats)),
    ]
    ref = rows[-1][1]
    print(f"size {args.size}x{args.size}, batch {args.batch}, {args.n} pairs, threads {torch.get_num_threads()}")
    print("| what | pairs/s | ratio vs lpips-alex |")
    print("|---|---:|---:|")
    for name, pps in rows:
        print(f"| {name} | {pps:.1f} | {pps / ref:.2f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Throughput of the shipped certified metric vs LPIPS-AlexNet at the same input size (CPU).

    python benchmarks/bench_shipped.py [--size 128] [--batch 16] [--n 64] [--repeats 3] [--threads 2]

Rows (pairs per second, pre-generated images, no decoding timed):
* ``lipsim-default`` distance + certificate: one forward pass per image and the certified distance
  interval at ε = 36/255 (``certify.distance_interval``, which also returns the distance);
* ``lipsim-default`` distance only;
* ``lpips-alex`` distance (random trunk: same convolution work as the ImageNet trunk, which cannot be
  downloaded here), v0.1 heads; and the ``lpips`` package's own network when it is installed.
The ratio (ours / LPIPS) is measured in the same run, passes interleaved; read it, not the absolute
numbers, on a busy machine.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")

import torch  # noqa: E402


def pairs_per_second(fns, x: torch.Tensor, y: torch.Tensor, batch: int, repeats: int) -> list:
    """Pairs/s of each fn: best of ``repeats`` passes over all pairs, in batches, after one warm-up pass.

    The functions' passes are interleaved (A, B, C, A, B, C, ...) so that load from other processes on a
    shared machine falls on all of them alike and the ratios stay meaningful.
    """
    def run(fn) -> float:
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], batch):
            fn(x[i:i + batch], y[i:i + batch])
        return time.perf_counter() - t0

    with torch.no_grad():
        for fn in fns:
            run(fn)
        best = [float("inf")] * len(fns)
        for _ in range(repeats):
            for j, fn in enumerate(fns):
                best[j] = min(best[j], run(fn))
    return [x.shape[0] / b for b in best]


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

    fns = {f"{args.model} distance + certificate (eps 36/255)": lambda a, b: certify.distance_interval(ours, a, b, eps),
           f"{args.model} distance": ours,
           "lpips-alex distance": lpips}
    try:  # the reference implementation, when installed (robustsim's LPIPS is faster than it)
        import warnings

        from robustsim._compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        warnings.filterwarnings("ignore")
        import lpips as lpips_package

        reference = lpips_package.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
        fns["`lpips` package, alex, distance"] = lambda a, b: reference(a, b, normalize=True)
    except ImportError:
        pass
    rows = list(zip(fns, pairs_per_second(list(fns.values()), x, y, args.batch, args.repeats)))
    base = rows[2][1]  # robustsim's lpips-alex
    print(f"size {args.size}x{args.size}, batch {args.batch}, {args.n} pairs, threads {torch.get_num_threads()}")
    print("| what | pairs/s | ratio vs lpips-alex |")
    print("|---|---:|---:|")
    for name, pps in rows:
        print(f"| {name} | {pps:.1f} | {pps / base:.2f} |")


if __name__ == "__main__":
    main()

"""Certified top-1 at the speed of search: batched certified top-1 (features given) vs plain exact FAISS.

N synthetic stored unit vectors (a mixture of 1000 Gaussian clusters, as in bench_retrieval.py), Q
queries from the same mixture (raw features with norms 0.5-20 and a declared relative error) plus a
few near-duplicates of stored items. Measured in one run, interleaved, REPEATS times:

- plain exact search: FAISS ``IndexFlatIP.search`` (batched, top-10) on the unit queries;
- certified top-1: :func:`robustsim.retrieval.fast_top1.certified_top1` (one float32 GEMM pass, exact
  float64 certificate on the rows that can matter, verified exclusion);
- the previous per-query float64 certificate (``certify.geometry.top1_radius``) on a few queries.

The gallery's unit-norm check (one float64 pass, done once per index when it is loaded/searched) is
outside the timing, like FAISS's index construction. Both sides use the same thread count.

    python benchmarks/bench_certified_search.py [--n 100000] [--dim 256] [--queries 1000] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference-queries", type=int, default=5)
    args = ap.parse_args()
    import faiss

    from robustsim.certify import geometry
    from robustsim.retrieval.fast_top1 import certified_top1

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, d, nq = args.n, args.dim, args.queries
    cent = rng.normal(size=(1000, d))
    x = (cent[rng.integers(0, 1000, n)] + 0.35 * rng.normal(size=(n, d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qf = cent[rng.integers(0, 1000, nq)] + 0.35 * rng.normal(size=(nq, d))
    qf[:10] = x[:10].astype(np.float64) + 1e-3 * rng.normal(size=(10, d))
    qf *= rng.uniform(0.5, 20, (nq, 1))
    bq = geometry.BoundedFeatures.declared(torch.from_numpy(qf), 2.0, 1e-6)
    gal = torch.from_numpy(x)
    geometry.check_unit_rows(gal)
    ix = faiss.IndexFlatIP(d)
    ix.add(x)
    qu = (qf / np.linalg.norm(qf, axis=1, keepdims=True)).astype(np.float32)
    print(f"N={n} D={d} Q={nq} threads={args.threads} cores={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    ratios = []
    for rep in range(args.repeats):
        t = time.perf_counter()
        ix.search(qu, 10)
        tf = time.perf_counter() - t
        t = time.perf_counter()
        c = certified_top1(bq, gal, unit_checked=True)
        tc = time.perf_counter() - t
        ratios.append(tf / tc)
        print(f"run {rep}: plain exact FAISS {nq / tf:.1f} q/s | certified top-1 {nq / tc:.1f} q/s | ratio {tf / tc:.1%}")
    k = args.reference_queries
    t = time.perf_counter()
    ref = geometry.top1_radius(bq.select(slice(0, k)), gal, unit_checked=True)
    tr = time.perf_counter() - t
    same = bool(torch.equal(ref.index, c.index[:k])) and bool(torch.allclose(ref.radius, c.radius[:k], rtol=1e-12, atol=0))
    print(f"per-query float64 certificate (before): {k / tr:.2f} q/s; identical results on those {k}: {same}")
    print(f"median ratio certified/plain: {float(np.median(ratios)):.1%}; certified radius > 0 for "
          f"{int((c.radius > 0).sum())}/{nq} queries; load at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

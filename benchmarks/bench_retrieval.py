"""Retrieval throughput: index build (images/s) and search (queries/s), exact vs IVF vs HNSW, recall@1.

Part 1 (build): a folder of real-photo crops (scikit-image photos, JPEG files) indexed with
``build_index``; the reference is the metric's own ``embed`` on the same images already in memory,
so the ratio is the cost of file decoding, batching by size, hashing and FAISS.

Part 2 (search): N synthetic unit vectors (a mixture of 1000 Gaussian clusters, like real embeddings;
unstructured noise would be the worst case for IVF/HNSW) in FAISS exact / IVF / HNSW, Q fresh queries
from the same mixture, batched top-10 search; recall@1 = approximate top-1 equal to the exact one.

Part 3 (certified search): ``robustsim.retrieval.search`` end to end with a tiny random LipSim
(query image -> features -> FAISS -> exact re-ranking -> top-1 certificate about the *true* top-1)
on the same N stored vectors: exact (scans all N for the certificate) vs IVF (scans only the lists
the sound bound cannot exclude).

    python benchmarks/bench_retrieval.py [--n 100000] [--dim 256] [--queries 1000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _photos_folder(d: Path, n: int, size: int) -> None:
    import skimage.data

    from robustsim.images import save_image

    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "moon"]
    rng = np.random.default_rng(0)
    for i in range(n):
        img = getattr(skimage.data, names[i % len(names)])()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        h, w = img.shape[:2]
        s = int(min(h, w) * rng.uniform(0.4, 0.9))
        t, l = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        x = torch.from_numpy(np.ascontiguousarray(img[t:t + s, l:l + s])).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area").clamp(0, 1)
        save_image(x, d / f"p{i:03d}.jpg")


def bench_build(n_images: int, size: int) -> None:
    from robustsim import hub
    from robustsim.images import load_image
    from robustsim.metrics.lipsim import CPU_DEFAULT, LipSim
    from robustsim.retrieval import build_index, find_images

    torch.manual_seed(0)
    metrics = {"lipsim (CPU_DEFAULT arch, random weights)": LipSim.from_config(CPU_DEFAULT).eval()}
    try:
        metrics["effnet-lite0-cosine"] = hub.load("effnet-lite0-cosine")
    except Exception as e:  # pragma: no cover
        print(f"effnet-lite0-cosine unavailable: {e}")
    with tempfile.TemporaryDirectory() as td:
        _photos_folder(Path(td), n_images, size)
        files = find_images(td)
        imgs = torch.cat([load_image(f) for f in files])
        print(f"\n## index build: {n_images} JPEG photos of {size}x{size}, batch 32, {torch.get_num_threads()} threads")
        print("| metric | build_index images/s | embed() images/s (in memory) | ratio |")
        print("|---|---|---|---|")
        for name, m in metrics.items():
            with torch.no_grad():
                m.embed(imgs[:4])  # warm-up
                t = time.perf_counter()
                for s in range(0, len(imgs), 32):
                    m.embed(imgs[s:s + 32])
                ref = len(imgs) / (time.perf_counter() - t)
            t = time.perf_counter()
            build_index(m, td, progress=False)
            ours = n_images / (time.perf_counter() - t)
            print(f"| {name} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f} |")


def _mixture(n: int, dim: int, centers: np.ndarray, rng, spread: float = 0.6) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + rng.normal(size=(n, dim)).astype(np.float32) * spread / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_search(n: int, dim: int, nq: int, ncert: int) -> None:
    import faiss

    from robustsim.metrics.lipsim import LipSim
    from robustsim.retrieval import Index, search, weights_hash

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(1000, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    base = _mixture(n, dim, centers, rng)
    queries = _mixture(nq, dim, centers, rng)
    torch.manual_seed(0)
    lip = LipSim(input_size=32, stem="unshuffle2", channels=16, conv_depth=2, conv_inner=8, pool=(4,),
                 linear_depth=2, linear_inner=dim, embed_dim=dim).eval()
    lip.name = "bench-lipsim"
    nlist = int(4 * np.sqrt(n))
    kinds = {"exact": {}, "ivf": {"nlist": nlist, "nprobe": 16}, "hnsw": {"M": 32, "ef_search": 64}}
    print(f"\n## search: {n:,} stored {dim}-d unit vectors (1000-cluster mixture), {nq} queries, top-10, "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    print("| index | build s | FAISS queries/s (batched) | speed-up vs exact | recall@1 | "
          f"certified search() queries/s ({ncert} image queries) | vectors scored exactly per certificate |")
    print("|---|---|---|---|---|---|---|")
    exact_ids, exact_qps = None, None
    gen = torch.Generator().manual_seed(0)
    qimgs = [torch.rand(1, 3, 40, 40, generator=gen) for _ in range(ncert)]
    for kind, params in kinds.items():
        ix = Index(metric_name="bench-lipsim", weights_sha256=weights_hash(lip), dim=dim, certified=True, kind=kind,
                   params=dict(params))
        ix.embeddings = base  # bulk load, then build FAISS once
        ix.paths = [f"v{i}" for i in range(n)]
        ix.gnorms = np.full(n, np.nan)
        t = time.perf_counter()
        fi = ix.faiss_index
        build = time.perf_counter() - t
        fi.search(queries[:10], 10)
        t = time.perf_counter()
        _, ids = fi.search(queries, 10)
        qps = nq / (time.perf_counter() - t)
        if kind == "exact":
            exact_ids, exact_qps = ids, qps
        recall = float((ids[:, 0] == exact_ids[:, 0]).mean())
        if kind == "hnsw":
            cert_qps, checked = float("nan"), n
            # certificates on HNSW scan everything, as exact does; skip the repeat
            cert_txt, chk_txt = "= exact (full scan)", f"{n:,}"
        else:
            search(ix, lip, qimgs[:2], k=10)
            t = time.perf_counter()
            res = search(ix, lip, qimgs, k=10)
            cert_qps = ncert / (time.perf_counter() - t)
            checked = float(np.mean([r.candidates_checked for r in res]))
            cert_txt, chk_txt = f"{cert_qps:.1f}", f"{checked:,.0f}"
        print(f"| {kind} {params or ''} | {build:.1f} | {qps:,.0f} | {qps / exact_qps:.1f}x | {recall:.3f} | "
              f"{cert_txt} | {chk_txt} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--cert-queries", type=int, default=50)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--skip-build", action="store_true")
    a = ap.parse_args()
    if not a.skip_build:
        bench_build(a.images, a.size)
    bench_search(a.n, a.dim, a.queries, a.cert_queries)


if __name__ == "__main__":
    main()

"""Retrieval under attack (LipSim §5.3) on held-out real photos, and a figure like LipSim's Figure 4.

Gallery: crops of the held-out photos (robustsim.data.photos, split "heldout"), written to a folder
and indexed with ``robustsim.retrieval.build_index``. Queries: a distorted copy of each gallery crop
(blur, noise, JPEG, contrast, ... from robustsim.data.photos.distort); a query is answered correctly
when its top-1 is its own original. Each query is then attacked with l2 PGD at ε = 2 (the paper's
setting, [0, 1] pixel units; the embedding attack of LipSim Eq. 14: push the query's embedding away
from where it was) and searched again. For certified metrics the top-1 certified radius is reported too.

Metrics are given by name (any hub name or saved .safetensors); ``random-lipsim`` is the CPU-default
LipSim architecture with random weights (a stand-in until lipsim-default is trained: it shows the
mechanics, not LipSim's accuracy).

    python scripts/retrieval_figure.py --metrics effnet-lite0-cosine,random-lipsim --out docs/retrieval_figure.png
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def load_metric(name: str):
    from robustsim import hub

    if name == "random-lipsim":
        from robustsim.metrics.lipsim import CPU_DEFAULT, LipSim

        torch.manual_seed(0)
        m = LipSim.from_config(CPU_DEFAULT).eval()
        m.name = "random-lipsim"
        return m
    return hub.load(name)


def make_data(n_crops: int, size: int, seed: int):
    """(gallery crops, distorted queries, distortion names); query i is a distortion of crop i."""
    from robustsim.data.photos import ORDERING_KINDS, distort, item_rng, random_crop, select_photos

    srcs = select_photos("heldout")
    kinds = sorted(ORDERING_KINDS)  # the 11 kinds the published figure used
    gallery, queries, labels = [], [], []
    for i in range(n_crops):
        rng = item_rng(seed, i, "retrieval")
        src = srcs[i % len(srcs)]
        crop = random_crop(src.load(), rng, size, (0.35, 0.8))
        kind = kinds[i % len(kinds)]
        q = distort(crop, kind, float(rng.uniform(0.3, 0.6)), seed=seed + i)
        gallery.append(crop[None])
        queries.append(q[None])
        labels.append(f"{src.name}/{kind}")
    return gallery, queries, labels


def evaluate(metric, gallery, queries, eps: float, steps: int, seed: int):
    from robustsim import attacks
    from robustsim.io import save_image
    from robustsim.retrieval import build_index, search

    with tempfile.TemporaryDirectory() as td:
        for i, g in enumerate(gallery):
            save_image(g, Path(td) / f"g{i:03d}.png", bits=16)
        ix = build_index(metric, td, progress=False)
        target = {p: int(Path(p).stem[1:]) for p in ix.paths}
        clean = search(ix, metric, queries, k=1)
        adv = []
        for q in queries:
            x_adv, _ = attacks.embedding_attack(metric, q, eps=eps, norm="l2", steps=steps, seed=seed)
            adv.append(x_adv)
        attacked = search(ix, metric, adv, k=1)
    top_c = [target[r.neighbours[0].path] for r in clean]
    top_a = [target[r.neighbours[0].path] for r in attacked]
    n = len(queries)
    out = {
        "metric": getattr(metric, "name", ""), "n_gallery": len(gallery), "n_queries": n, "eps": eps, "steps": steps,
        "top1_clean": float(np.mean([t == i for i, t in enumerate(top_c)])),
        "top1_attacked": float(np.mean([t == i for i, t in enumerate(top_a)])),
    }
    radii = [r.top1_radius for r in clean]
    if radii[0] is not None:
        ok = [r if t == i else 0.0 for i, (r, t) in enumerate(zip(radii, top_c))]
        out["top1_certified"] = {f"{e:g}": float(np.mean([r > e for r in ok])) for e in (36 / 255, 72 / 255, 0.5, 1.0, 2.0)}
        out["median_radius_correct"] = float(np.median([r for r in ok if r > 0])) if any(r > 0 for r in ok) else 0.0
    return out, top_c, top_a, adv


def figure(rows, gallery, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    heads = ["query", "top-1", "adversarial query (l2 ε=2)", "its top-1"]
    for r, (name, q, tc, xa, ta, i) in enumerate(rows):
        ims = [q, gallery[tc], xa, gallery[ta]]
        for c, im in enumerate(ims):
            ax = axes[r, c]
            ax.imshow(im[0].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=8)
            if c in (1, 3):
                ok = (tc if c == 1 else ta) == i
                for s in ax.spines.values():
                    s.set_edgecolor("green" if ok else "red")
                    s.set_linewidth(3)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="effnet-lite0-cosine,random-lipsim")
    ap.add_argument("--n", type=int, default=24, help="gallery crops (= queries)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--eps", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/retrieval_figure.png")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    a = ap.parse_args()
    gallery, queries, labels = make_data(a.n, a.size, a.seed)
    results, rows = [], []
    for name in [s.strip() for s in a.metrics.split(",") if s.strip()]:
        try:
            m = load_metric(name)
        except Exception as e:
            print(f"skipping {name}: {e}")
            continue
        res, tc, ta, adv = evaluate(m, gallery, queries, a.eps, a.steps, a.seed)
        results.append(res)
        print(json.dumps(res))
        # show the first query the attack flips (or the first query) for this metric, and one that survives
        flipped = [i for i in range(len(queries)) if tc[i] == i and ta[i] != i]
        kept = [i for i in range(len(queries)) if tc[i] == i and ta[i] == i]
        for i in (flipped[:1] + kept[:1]) or [0]:
            rows.append((f"{name}\n{labels[i]}", queries[i], tc[i], adv[i], ta[i], i))
    if rows:
        figure(rows, gallery, Path(a.out))
        print(f"wrote {a.out}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

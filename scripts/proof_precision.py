#!/usr/bin/env python
"""How much rounding a certificate can afford: certified 2AFC accuracy vs the feature-error allowance.

Issue 19 asks for a proven certificate at <= 1.5x a natural evaluation on CPU. The proof today recomputes
the embeddings in float64 (error ~1e-8 of ||g||), which costs several float32 passes here. Any cheaper
proof is a coarser one: a float32 pass with the worst-case γ_n bound ("float32" mode), or a blocked float32
pass (nine shifted 1x1 products per 3x3 convolution: about 3x a float32 convolution here, and at best a 9x
tighter bound, γ_48 instead of γ_432). This script measures what a coarser bound costs on the held-out judged
suite (the labels are the consensus of human-calibrated metrics, not people): the same triplets certified with
the default proof, with the proven float32 bound, and with a declared relative error r added to the default
(``certify.two_afc(..., float_error=r)``: err += 3·r·||g|| per embedding).

    python scripts/proof_precision.py                      # lipsim-default, 500 triplets, 128 px
    python scripts/proof_precision.py --n 200 --metric runs/x/model.safetensors
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Sequence

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")

ALLOWANCES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
CERT_EPS = (36 / 255, 108 / 255, 1.0)


def certified_rows(metric, ref, x0, x1, prefers_x1, allowances: Sequence[float] = ALLOWANCES,
                   eps: Sequence[float] = CERT_EPS, float32: bool = True) -> List[Dict]:
    """One row per float mode: the mode, the median err/||g|| of the references, and certified 2AFC accuracy
    (decision agrees with the label and radius >= ε) at each ε. ``prefers_x1``: bool tensor of labels."""
    import torch

    from robustsim import certify

    modes: List = ["float64"] + (["float32"] if float32 else []) + [float(r) for r in allowances]
    with torch.no_grad():
        g = metric.raw_features(ref).flatten(1).double().norm(dim=1)
    rows = []
    for mode in modes:
        cert = certify.two_afc(metric, ref, x0, x1, float_error=mode)
        correct = cert.closer.bool() == prefers_x1.bool()
        rel = float((cert.float_error.double() / g.clamp_min(1e-300)).median())
        rows.append({"mode": "proven float64 (default)" if mode == "float64" else
                     "proven float32" if mode == "float32" else f"default + r = {mode:g}",
                     "rel_err": rel, "natural": float(correct.double().mean()),
                     "certified": [float((correct & cert.certified(e)).double().mean()) for e in eps]})
    return rows


def eps_label(e: float) -> str:
    """36/255 for a multiple of 1/255 below 1, else the number."""
    k = e * 255
    return f"{round(k)}/255" if e < 1 and abs(k - round(k)) < 1e-6 else f"{e:g}"


def table(rows: List[Dict], eps: Sequence[float] = CERT_EPS) -> str:
    head = "| float bound | median err / ‖g(ref)‖ | " + " | ".join(f"certified at {eps_label(e)}" for e in eps) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(eps)]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['rel_err']:.2g} | " + " | ".join(f"{100 * c:.1f}%" for c in r["certified"]) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metric", default="lipsim-default")
    ap.add_argument("--n", type=int, default=500, help="held-out judged triplets")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.n <= 0 or args.size <= 0:
        print("error: --n and --size must be positive", file=sys.stderr)
        return 2
    import robustsim
    from robustsim.data.judged import JudgedPool
    from robustsim.evaluate.judged import Resized

    metric = robustsim.load(args.metric).eval()
    suite = JudgedPool(size=64, split="heldout", seed=args.seed, per_window=2, progress=False).suite(args.n)
    ref, x0, x1, label, _ = Resized(suite, args.size).tensors()
    rows = certified_rows(metric, ref, x0, x1, label == 1)
    print(f"{args.metric}, {len(suite)} held-out judged triplets (judge-consensus labels), {args.size} px; "
          f"natural {100 * rows[0]['natural']:.1f}%")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

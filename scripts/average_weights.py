#!/usr/bin/env python
"""Average the weights of models of one architecture (a "model soup") into a new robustsim ``.safetensors``.

    python scripts/average_weights.py runs/a/model.safetensors runs/b/model.safetensors --out runs/soup/model.safetensors
    python scripts/average_weights.py A B --weights 0.25,0.75 --out C

Why: two fine-tunes of one model (one trained on from the other at a larger certified radius) lie on a line
in weight space along which agreement and robustness trade smoothly; their average is one point between them,
found in a minute instead of a training run. Any float weights of an SLL network are 1-Lipschitz (the
rescaling follows the parameters), so the result needs no projection; ``robustsim verify OUT`` checks it.
The average is formed in float64 and stored in each tensor's own dtype; non-float buffers must be equal.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")


def average_state(states, weights):
    """The weighted average of state dicts with the same keys and shapes (float64 sum, original dtype)."""
    import torch

    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            raise ValueError(f"model {i + 1} has other parameters than model 1: not the same architecture")
    out = {}
    for k in keys:
        ts = [s[k] for s in states]
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(f"{k}: shapes {[tuple(t.shape) for t in ts]} differ: not the same architecture")
        if ts[0].is_floating_point():
            out[k] = sum(w * t.double() for w, t in zip(weights, ts)).to(ts[0].dtype)
        elif all(torch.equal(t, ts[0]) for t in ts):
            out[k] = ts[0].clone()
        else:
            raise ValueError(f"{k}: non-float buffers differ between the models; they cannot be averaged")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="hub names or .safetensors files (two or more)")
    ap.add_argument("--weights", help="comma-separated, one per model, summing to 1 (default: equal)")
    ap.add_argument("--out", required=True, help="the .safetensors file to write")
    args = ap.parse_args(argv)
    if len(args.models) < 2:
        print("error: give two or more models to average", file=sys.stderr)
        return 2
    try:
        weights = ([float(w) for w in args.weights.split(",")] if args.weights
                   else [1.0 / len(args.models)] * len(args.models))
    except ValueError:
        weights = []
    if len(weights) != len(args.models) or any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-9:
        print(f"error: --weights needs {len(args.models)} non-negative numbers summing to 1, got {args.weights}",
              file=sys.stderr)
        return 2
    import robustsim
    from robustsim import hub

    metrics = [robustsim.load(m) for m in args.models]
    try:
        state = average_state([m.state_dict() for m in metrics], weights)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first = metrics[0]
    first.load_state_dict(state)
    note = " + ".join(f"{w:g}*{m}" for w, m in zip(weights, args.models))
    print(hub.save(first, args.out, recipe="average", note=note))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Start a new LipSim architecture from a trained one: keep every parameter whose name and shape match.

    python scripts/transplant_weights.py runs/v13_soup_v11_v12/model.safetensors --set pool=2 --set linear_depth=2 \
        --set linear_inner=128 --set embed_dim=12288 --out runs/v15_init/model.safetensors

(``runs/v13_soup_v11_v12`` is ``lipsim-default`` v5, built by the recipe in docs/MODELS.md; the source may be any
LipSim name or file.) Why: v5's convolutions are trained to see what the judges see, but its 4×4 pool keeps only
3072 of 49 152 input dimensions (docs/TRAINING.md, "Eighth round"). A network that pools less needs new dense
layers (their input grows), yet it can keep the stem and the convolutions. Parameters present in both with
the same shape are copied; the others keep the new network's seeded initialisation, and the script lists
both. The result is 1-Lipschitz whatever its weights (SLL layers); ``robustsim verify OUT`` checks it.
``model.arch`` beside ``model.name`` in a fine-tuning config does the shape-preserving case in place.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")


def parse_value(text: str):
    """``2`` -> 2, ``2,2`` -> [2, 2] (pool factors), anything else stays a string (``stem=unshuffle4``): the
    comma lists that YAML, which reads the other values (``robustsim train``'s ``--set``), leaves as text."""
    parts = text.split(",")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        return text
    return vals if len(parts) > 1 or text.endswith(",") else vals[0]


def transplant(source, overrides: dict, seed: int = 0):
    """A new model of ``type(source)`` with ``source.config()`` updated by ``overrides`` (new parameters drawn
    after seeding with ``seed``); returns (model, kept names, new names). Raises ValueError when nothing would
    be kept."""
    import torch

    from robustsim.train.finetune import reconfigure

    if isinstance(overrides.get("pool"), int):
        overrides = {**overrides, "pool": [overrides["pool"]]}
    torch.manual_seed(seed)
    model, kept, _ = reconfigure(source, overrides)
    if not kept:
        raise ValueError("no parameter of the source has a name and shape of the new network: nothing to keep")
    return model.eval(), kept, [k for k in model.state_dict() if k not in kept]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="hub name or robustsim .safetensors of a LipSim")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a configuration change, e.g. pool=2 or embed_dim=12288 (repeatable)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new parameters' initialisation")
    ap.add_argument("--out", required=True, help="the new .safetensors")
    args = ap.parse_args(argv)
    import robustsim
    from robustsim import hub
    from robustsim.cli.train import parse_overrides
    from robustsim.errors import InputError, RobustsimError

    try:
        overrides = {k: parse_value(v.strip()) if isinstance(v, str) else v
                     for k, v in parse_overrides(args.set).items()}
    except InputError as e:
        ap.error(str(e))
    if not overrides:
        ap.error("give at least one --set KEY=VALUE: without a change there is nothing to transplant")

    try:
        source = robustsim.load(args.source)
        if not hasattr(source, "config") or not getattr(source, "certified", False):
            ap.error(f"{args.source} is not a LipSim (a certified, configurable metric)")
        model, kept, new = transplant(source, overrides, args.seed)
    except (RobustsimError, TypeError, ValueError) as e:
        print(f"transplant_weights: {e}", file=sys.stderr)
        return 2
    model.name = os.path.splitext(os.path.basename(args.out))[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    hub.save(model, args.out)
    n_new = sum(model.state_dict()[k].numel() for k in new)
    print(f"kept {len(kept)} tensors of {args.source}; new ({n_new} numbers): {', '.join(new) or 'none'}")
    print(f"wrote {args.out}: {model.config()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

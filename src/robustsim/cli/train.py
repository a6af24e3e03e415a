"""``robustsim train {rlpips,distill,finetune} --config CONFIG.yaml``: run a training recipe.

Multi-GPU: ``torchrun --nproc_per_node 8 $(which robustsim) train distill --config C.yaml`` (each process
reads the same config; the global batch is split between them). ``--nproc N`` starts N local CPU
processes (gloo) without torchrun.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

from ..train.config import RECIPES
from .options import add_json_option, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train R-LPIPS, distil a LipSim student, or fine-tune with the hinge loss")
    p.add_argument("recipe", choices=RECIPES, help="which recipe (must match the config's 'recipe')")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable; VALUE is YAML)")
    p.add_argument("--resume", default="auto", help="auto (default: continue from OUT_DIR/checkpoint.pt if present), never, or a checkpoint path")
    p.add_argument("--nproc", type=int, default=1, help="local processes (CPU/gloo data parallel) instead of torchrun")
    p.add_argument("--prepare-only", action="store_true", help="distill: build the teacher-embedding cache and stop")
    add_json_option(p)
    p.set_defaults(func=cmd_train)


def parse_overrides(items: List[str]) -> Dict[str, Any]:
    import yaml

    from ..errors import InputError

    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..train.trainer import spawn_local, train
    from ..train.config import load_config

    overrides = parse_overrides(args.overrides)
    cfg = load_config(args.config, overrides)
    if cfg.recipe != args.recipe:
        raise InputError(f"{args.config} is a {cfg.recipe!r} config, not {args.recipe!r}")
    if args.prepare_only:
        if cfg.recipe != "distill":
            raise InputError("--prepare-only applies to the distill recipe")
        from ..train.distill import DistillRecipe

        cache = DistillRecipe(cfg).prepare_cache()
        print(f"teacher cache ready: {cache.root} ({cache.n} crops, {cache.dim}-d targets)")
        return 0
    if args.nproc < 1:
        raise InputError("--nproc must be >= 1")
    if args.nproc > 1:
        spawn_local(cfg, args.nproc, resume=args.resume)
        print(f"done: {cfg.out_dir}/model.safetensors")
        return 0
    res = train(cfg, resume=args.resume)
    info = {"status": res.status, "step": res.step, "total_steps": res.total_steps,
            "model": str(res.model_path) if res.model_path else None,
            "checkpoint": str(res.checkpoint) if res.checkpoint else None,
            "last_loss": res.losses[-1][1] if res.losses else None,
            "samples_per_second": round(res.samples_per_second, 3)}
    if args.json:
        print_json(info)
    else:
        print(f"{res.status}: step {res.step}/{res.total_steps}, last loss {info['last_loss']}, "
              f"model {info['model'] or '-'} (checkpoint {info['checkpoint']})")
    return 0 if res.status == "done" else 130

"""``robustsim convert lipsim ...`` and ``robustsim verify M``."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert released checkpoints to robustsim's safetensors format")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    c = kinds.add_parser("lipsim", help="an official LipSim checkpoint (.pth from the authors' Google Drive)")
    c.add_argument("src", metavar="OFFICIAL.pth")
    c.add_argument("dst", metavar="OUT.safetensors")
    c.add_argument("--embed-dim", type=int, default=None,
                   help="coordinates kept at the output (the official n_classes; default 1792, DreamSim's)")
    c.set_defaults(func=cmd_convert_lipsim)

    v = sub.add_parser("verify", help="measure a certified metric's Lipschitz constants, layer by layer (exit 1 on violation)")
    v.add_argument("metric", metavar="M", help="hub name or saved .safetensors file")
    v.add_argument("--weights", default=None, help="weights file for a hub name")
    v.add_argument("--samples", type=int, default=2, help="random images probed (default 2)")
    v.add_argument("--iters", type=int, default=30, help="power iterations per layer (default 30)")
    v.add_argument("--restarts", type=int, default=2, help="pair-search restarts (default 2; 0 disables it)")
    v.add_argument("--steps", type=int, default=30, help="gradient-ascent steps per restart (default 30)")
    v.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_verify)


def cmd_convert_lipsim(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from .convert import convert_lipsim

    if args.embed_dim is not None and args.embed_dim < 1:
        raise InputError(f"--embed-dim must be >= 1, got {args.embed_dim}")
    out = convert_lipsim(args.src, args.dst, embed_dim=args.embed_dim)
    from ..hub import read_saved_header

    cfg = read_saved_header(out)["config"]
    print(f"wrote {out}: LipSim D={cfg['conv_depth']} C={cfg['channels']} inner={cfg['conv_inner']} "
          f"L={cfg['linear_depth']} F={cfg['linear_inner']} E={cfg['embed_dim']}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..hub import load
    from .verify import verify

    if args.samples < 1 or args.iters < 1 or args.restarts < 0 or args.steps < 0 or args.tol < 0:
        raise InputError("--samples and --iters must be >= 1; --restarts, --steps and --tol >= 0")
    metric = load(args.metric, weights=args.weights) if args.weights else load(args.metric)
    report = verify(metric, n_samples=args.samples, iters=args.iters, restarts=args.restarts, steps=args.steps,
                    seed=args.seed, tol=args.tol, progress=True)
    print(report.table())
    w = report.worst
    if report.ok:
        print(f"OK: every estimate <= bound × (1 + {args.tol:g}); largest ratio {w.value / w.bound:.8f} ({w.name}, {w.method})")
        return 0
    print(f"FAIL: {w.name} ({w.method}) measured {w.value:.8f} > {w.bound:g} × (1 + {args.tol:g})")
    return 1

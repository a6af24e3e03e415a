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
    v.add_argument("--thorough", action="store_true",
                   help="the longer search: 2 samples, 30 iterations, float64 and the gradient-ascent pair search "
                        "(minutes); without it a quick check (1 sample, 10 iterations, float32, no pair search) that "
                        "takes seconds. Both run single-threaded")
    v.add_argument("--samples", type=int, default=None, help="random images probed (default 1; 2 with --thorough)")
    v.add_argument("--iters", type=int, default=None,
                   help="power iterations per layer and for the whole network (default 10 per layer and 5 for "
                        "the network; 30 with --thorough)")
    v.add_argument("--restarts", type=int, default=None,
                   help="pair-search restarts (default 0 = no pair search; 2 with --thorough)")
    v.add_argument("--steps", type=int, default=None, help="gradient-ascent steps per restart (default 0; 30 with --thorough)")
    v.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_verify)


def cmd_convert_lipsim(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..lipschitz.convert import convert_lipsim

    if args.embed_dim is not None and args.embed_dim < 1:
        raise InputError(f"--embed-dim must be >= 1, got {args.embed_dim}")
    out = convert_lipsim(args.src, args.dst, embed_dim=args.embed_dim)
    from ..hub import read_saved_header

    cfg = read_saved_header(out)["config"]
    print(f"wrote {out}: LipSim D={cfg['conv_depth']} C={cfg['channels']} inner={cfg['conv_inner']} "
          f"L={cfg['linear_depth']} F={cfg['linear_inner']} E={cfg['embed_dim']}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import time

    from .options import metric_name
    from ..errors import InputError
    from ..hub import load
    from ..lipschitz.verify import QUICK, THOROUGH, verify

    preset = dict(THOROUGH if args.thorough else QUICK)
    given = {"n_samples": args.samples, "iters": args.iters, "restarts": args.restarts, "steps": args.steps}
    preset.update({k: v for k, v in given.items() if v is not None})
    if args.iters is not None:
        preset["network_iters"] = None  # an explicit --iters applies to the whole network too
    if preset["n_samples"] < 1 or preset["iters"] < 1 or preset["restarts"] < 0 or preset["steps"] < 0 or args.tol < 0:
        raise InputError("--samples and --iters must be >= 1; --restarts, --steps and --tol >= 0")
    # measured on 2 cores shared with other jobs (load ~12): lipsim-default's verify (8/4 iterations) took
    # 4.3 s of CPU on one thread and 20 s on two -- small per-sample jvp/vjp products parallelise poorly
    # and the second thread spins; single-threaded, verify stays fast however busy the machine is
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    name = metric_name(args.metric)
    metric = load(name, weights=args.weights) if args.weights else load(name)
    report = verify(metric, seed=args.seed, tol=args.tol, progress=True, **preset)
    print(report.table())
    searched = preset["restarts"] > 0 and preset["steps"] > 0
    net_iters = preset["network_iters"] or preset["iters"]
    print(f"{'thorough' if args.thorough else 'quick'} check: {preset['n_samples']} sample(s), {preset['iters']} power "
          f"iterations per layer, {net_iters} for the network, {str(preset['dtype']).replace('torch.', '')}, "
          + (f"pair search {preset['restarts']}×{preset['steps']} steps" if searched else
             "no pair search (--thorough adds it)")
          + f"; {time.perf_counter() - started:.1f} s")
    w = report.worst
    if report.ok:
        print(f"OK: every estimate <= bound × (1 + {args.tol:g}); largest ratio {w.value / w.bound:.8f} ({w.name}, {w.method})")
        return 0
    print(f"FAIL: {w.name} ({w.method}) measured {w.value:.8f} > {w.bound:g} × (1 + {args.tol:g})")
    return 1

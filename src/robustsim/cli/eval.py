"""``robustsim eval``: 2AFC / JND / embedding / retrieval evaluation with resumable runs and reports.

    robustsim eval --metric M --dataset ordering|teacher|bapps-2afc|bapps-jnd|nights [--root DIR --split S]
                   [--attack apgd-ce --norm l2 --eps 0.5,1,2,3 --target ref --steps 100] [--certified]
                   [--embedding-attack] [--retrieval] [--batch-size 32 --device cpu --out DIR --limit N]
    robustsim eval --metric M --dataset judged [--n 500 --size 64 --judges lpips-alex,... --kinds translate,...]
                   [--extra-dir DIR] [--attack ...]          # judge-consensus 2AFC (leave-one-out for judges)
    robustsim eval --metric M --dataset judged-pairs [--n 340]  # Spearman ρ with the judges' mean distance
    robustsim eval --suite judged [--out docs]       # regenerates docs/RESULTS.md (judged headline)
    robustsim eval --suite offline [--out DIR]       # the older ordering-suite report

``--out DIR`` holds the per-batch results (rerun the same command after an interruption: finished
batches are not recomputed) and the report (results.json, results.md, PNG plots).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from ..attacks.engine import NORMS
from ..attacks.optimisers import list_optimisers
from ..attacks.twoafc import TARGETS
from ..data.registry import dataset_spec, list_datasets
from ..errors import InputError
from ..evaluate.suites import list_suites, run_suite, suite_spec
from .options import add_device_option, add_metric_option



def _floats(s: str) -> List[float]:
    try:
        vals = [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--eps must be comma-separated numbers (e.g. 0.5,1,2,3), got {s!r}") from None
    if not vals:
        raise InputError("--eps is empty")
    return vals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a metric: 2AFC natural/attacked/certified, JND, embedding attack, retrieval")
    add_metric_option(p)
    p.add_argument("--dataset", choices=list_datasets(), help="which data to evaluate on")
    p.add_argument("--suite", choices=list_suites(),
                   help="; ".join(f"{n}: {suite_spec(n).description}" for n in list_suites()))
    p.add_argument("--root", help="dataset root (BAPPS / NIGHTS)")
    p.add_argument("--split", help="dataset split (BAPPS: train|val, NIGHTS: test|test_imagenet|..., photos: heldout|train)")
    p.add_argument("--categories", help="BAPPS categories, comma-separated (default: all of the split)")
    p.add_argument("--n", type=int, default=256, help="offline suites: number of triplets")
    p.add_argument("--size", type=int, help="offline suites: image side (default: the metric's input size, else 64)")
    p.add_argument("--judge", default="effnet-lite0-cosine", help="teacher suite: metric that labels the triplets")
    p.add_argument("--judges", help="judged suites: comma-separated judge metrics (default: lpips-alex,lpips-vgg,"
                   "stlpips-alex,stlpips-vgg,dists)")
    p.add_argument("--kinds", help="judged suites: comma-separated distortion kinds (default: all 17)")
    p.add_argument("--extra-dir", action="append", default=[], help="judged suites: extra photo folder (repeatable; "
                   "also $ROBUSTSIM_PHOTOS)")
    p.add_argument("--per-window", type=int, default=2, help="judged suite: candidate triplets per photo window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack", choices=list_optimisers(), help="2AFC attack method")
    p.add_argument("--norm", default="l2", choices=NORMS)
    p.add_argument("--eps", default="0.5,1,2,3", help="attack budgets, comma-separated ([0,1] pixel units)")
    p.add_argument("--target", default="ref", choices=TARGETS, help="perturbed image(s)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--certified", action="store_true", help="certified 2AFC (certified metrics): same forward pass as natural")
    p.add_argument("--embedding-attack", action="store_true", help="also the embedding attack histogram at --eps")
    p.add_argument("--retrieval", action="store_true", help="also top-1 retrieval clean/attacked (ordering suite)")
    p.add_argument("--batch-size", type=int, default=32)
    add_device_option(p, default=None)
    p.add_argument("--limit", type=int, help="evaluate only the first N items")
    p.add_argument("--on-corrupt", default="skip", choices=("skip", "fail"),
                   help="unreadable image in a dataset: skip and count it (default) or stop")
    p.add_argument("--out", help="run directory: per-batch results (resumable) and the report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)


def _dataset(args, metric):
    from ..data.registry import build_dataset, dataset_spec

    spec = dataset_spec(args.dataset)
    size = args.size
    if size is None and spec.size_from_metric and getattr(metric, "input_size", None):
        size = metric.input_size[0]
    opts = {}
    if spec.name == "teacher":
        opts = dict(teacher=args.judge, device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    return build_dataset(spec.name, root=args.root, split=args.split, size=size, n=args.n, seed=args.seed,
                         categories=args.categories, **opts)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate.report import write_report

    progress = not args.no_progress
    if args.suite:
        out = run_suite(args.suite, args.out or "docs", progress=progress, device=args.device, extra_dirs=args.extra_dir)
        print(f"wrote {out['paths']['md']}")
        return 0
    if not args.dataset:
        raise InputError(f"give --dataset ({', '.join(list_datasets())}) or --suite {'|'.join(list_suites())}")
    from .. import hub

    if dataset_spec(args.dataset).protocol in ("judged", "judged-pairs"):
        return _cmd_judged(args, progress)
    metric = hub.load(args.metric, device=args.device)
    ds = _dataset(args, metric)
    out = Path(args.out) if args.out else None
    ident = {"dataset": args.dataset, "root": args.root, "split": args.split, "categories": args.categories,
             "n": None if dataset_spec(args.dataset).needs_root else args.n, "size": args.size, "seed": args.seed}
    result = {}
    if dataset_spec(args.dataset).protocol == "jnd":
        from ..evaluate.jnd import evaluate_jnd

        if args.attack or args.certified or args.retrieval or args.embedding_attack:
            raise InputError(f"--dataset {args.dataset} supports the natural JND mAP only")
        result = evaluate_jnd(metric, ds, args.batch_size, args.device, run_dir=out and out / "jnd", limit=args.limit,
                              on_corrupt=args.on_corrupt, progress=progress, config=ident)
    else:
        from ..evaluate.twoafc import AttackSpec, evaluate_2afc

        if args.retrieval and not getattr(metric, "has_embedding", False):
            raise InputError(f"{metric.name} has no embedding: --retrieval needs a cosine/embedding metric (not LPIPS)")
        attack = None
        if args.attack:
            attack = AttackSpec(args.attack, args.norm, _floats(args.eps), args.target, args.steps, args.restarts, args.seed)
        result = evaluate_2afc(metric, ds, args.batch_size, args.device, attack=attack, certified=args.certified,
                               run_dir=out and out / "2afc", limit=args.limit, on_corrupt=args.on_corrupt,
                               progress=progress, config=ident)
        if args.embedding_attack:
            from ..evaluate.embedding import evaluate_embedding_attack

            result["embedding"] = evaluate_embedding_attack(metric, ds, _floats(args.eps), args.steps, args.batch_size,
                                                            args.device, run_dir=out and out / "embedding",
                                                            limit=args.limit, on_corrupt=args.on_corrupt,
                                                            progress=progress, seed=args.seed, config=ident)
        if args.retrieval:
            from ..evaluate.offline import offline_retrieval_set
            from ..evaluate.retrieval import evaluate_retrieval

            if args.dataset != "ordering":
                raise InputError("--retrieval is available with --dataset ordering (queries: weaker distortions)")
            q, g, t = offline_retrieval_set(args.limit or args.n, ds.size, args.seed)
            result["retrieval"] = evaluate_retrieval(metric, q, g, t, eps=_floats(args.eps)[-1], steps=args.steps,
                                                     batch_size=args.batch_size, device=args.device, progress=progress)
    result["dataset"] = args.dataset
    if out:
        paths = write_report([result], out, title=f"{metric.name} on {args.dataset}")
        print(f"report: {paths['md']}")
    from ..evaluate.report import markdown

    print(markdown([result], title=f"{metric.name} on {args.dataset}"))
    return 0


def _csv(s):
    return [v.strip() for v in s.split(",") if v.strip()] if s else None


def _cmd_judged(args: argparse.Namespace, progress: bool) -> int:
    """``--dataset judged`` / ``judged-pairs``: judge-consensus 2AFC or distance correlation of one metric."""
    import json

    from .. import hub
    from ..data.judged import DEFAULT_JUDGES, JudgedPairs, JudgedPool
    from ..evaluate.judged import evaluate_judged, evaluate_pairs
    from ..evaluate.twoafc import AttackSpec

    if args.retrieval or args.embedding_attack:
        raise InputError("--retrieval / --embedding-attack are not available with the judged suites")
    judges = _csv(args.judges) or list(DEFAULT_JUDGES)
    common = dict(size=args.size or 64, split=args.split or "heldout", kinds=_csv(args.kinds), judges=judges,
                  seed=args.seed, extra_dirs=args.extra_dir or None, batch_size=args.batch_size, device=args.device,
                  progress=progress)
    if args.dataset == "judged-pairs":
        pairs = JudgedPairs(n=args.n, per_window=args.per_window, **common)
        metric = hub.load(args.metric, device=args.device)
        res = evaluate_pairs(metric, pairs, name=metric.name, batch_size=args.batch_size, device=args.device,
                             progress=progress)
        print(f"{metric.name}: Spearman rho with the judges' mean normalised distance = {res['overall']:.3f} (n={res['n']})")
        for k, v in res["kinds"].items():
            print(f"  {k:<16} {v:.3f}")
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "judged_pairs.json").write_text(json.dumps(res, indent=1))
        return 0
    pool = JudgedPool(per_window=args.per_window, **common)
    pool.select(args.n, None)  # label first (and fail on a too-large --n) before loading the metric
    metric = hub.load(args.metric, device=args.device)
    attacks = []
    if args.attack:
        attacks = [AttackSpec(args.attack, args.norm, _floats(args.eps), args.target, args.steps, args.restarts, args.seed)]
    out = Path(args.out) if args.out else None
    res = evaluate_judged(metric, pool, args.n, name=metric.name, attacks=attacks, n_attack=args.limit,
                          certified=args.certified or None, batch_size=args.batch_size, device=args.device,
                          run_dir=str(out / "judged") if out else None, progress=progress)
    lo = f", leave-one-out: labels from {', '.join(res['voters'])}" if res["leave_out"] else ""
    c = res["counts"]
    print(f"{metric.name} on the judged suite: {100 * res['natural']['overall']:.1f} % (n={res['n']}, "
          f"{c['dropped']} of {c['labelled']} candidates dropped without consensus{lo})")
    for k, v in res["kinds"].items():
        print(f"  {k:<16} {100 * v:.1f}")
    for a in res["attacks"]:
        print("  attacked " + ", ".join(f"eps={e}: {100 * v:.1f}" for e, v in a["eps"].items()) + f" (n={a['n']})")
    if res.get("certified"):
        print("  certified " + ", ".join(f"{k}: {100 * v['overall']:.1f}" for k, v in res["certified"]["at"].items()))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "judged.json").write_text(json.dumps(res, indent=1))
        print(f"report: {out / 'judged.json'}")
    return 0

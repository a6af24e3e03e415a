"""``robustsim index`` (build / update / prune an index of an image folder) and ``robustsim search``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..retrieval.distributed import add_arguments as add_distributed_arguments
from ..retrieval.index import KINDS
from ..retrieval.distributed import cmd_index_distributed
from .options import add_device_option, add_json_option, add_metric_option, load_metric, metric_name, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed every image under a folder into a searchable index file (needs [retrieval])")
    p.add_argument("folder", nargs="?", help="folder of images (searched recursively)")
    p.add_argument("--out", "-o", required=True, help="index file to write (replaced atomically)")
    add_metric_option(p, weights=True)
    p.add_argument("--kind", choices=KINDS, default="exact", help="FAISS index kind (default exact)")
    p.add_argument("--nlist", type=int, default=None, help="ivf: number of lists (default ~4·sqrt(N))")
    p.add_argument("--nprobe", type=int, default=None, help="ivf: lists probed per query (default nlist/8)")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node (default 32)")
    p.add_argument("--ef-search", type=int, default=64, help="hnsw: search breadth (default 64)")
    p.add_argument("--update", action="store_true",
                   help="add the folder's new files to the existing --out index and drop its files that no longer exist")
    p.add_argument("--remove", nargs="+", default=None, metavar="PATH", help="remove these files (or folders) from --out")
    p.add_argument("--batch-size", type=int, default=32)
    add_device_option(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="nearest stored images of query images, with certified radii for certified metrics")
    p.add_argument("index", help="index file written by `robustsim index`")
    p.add_argument("queries", nargs="+", help="query image files")
    p.add_argument("-k", type=int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--tau", type=float, default=None, help="near-duplicate threshold on d = 1 - cos (decision d <= tau)")
    add_metric_option(p, help="override the metric recorded in the index (must be the same model)", weights=True)
    add_json_option(p)
    add_device_option(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("index-distributed",
                       help="build a sharded index with several workers (torchrun; one model replica per worker)")
    add_distributed_arguments(p)
    p.set_defaults(func=cmd_index_distributed)


def _metric_ref(ref):
    ref = metric_name(ref)
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.is_file() else ref


def cmd_index(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..retrieval.index import build_index, find_images, load_index

    out = Path(args.out).expanduser()
    if args.remove:
        ix = load_index(out)
        n = ix.remove(str(Path(p)) for p in args.remove)
        ix.save(out)
        print(f"removed {n} file(s); {len(ix)} remain in {out}")
        return 0
    if not args.folder:
        raise InputError("give the image folder to index (or --remove PATH ... to prune an index)")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.update:
        ix = load_index(out)
        metric = load_metric(args.metric or ix.metric_ref, device=args.device, weights=args.weights)
        ix.check_metric(metric)
        folder = Path(args.folder)
        files = find_images(folder)
        present = {str(f) for f in files}
        gone = [p for p in ix.paths if Path(p).is_relative_to(folder) and p not in present]
        removed = ix.remove(gone)
        added = ix.add_images(metric, files, batch_size=args.batch_size, progress=True)
    else:
        metric = load_metric(args.metric, device=args.device, weights=args.weights)
        params = {}
        if args.kind == "ivf":
            params = {k: v for k, v in (("nlist", args.nlist), ("nprobe", args.nprobe)) if v is not None}
        elif args.kind == "hnsw":
            params = {"M": args.hnsw_m, "ef_search": args.ef_search}
        ix = build_index(metric, args.folder, kind=args.kind, batch_size=args.batch_size,
                         metric_ref=_metric_ref(args.metric), **params)
        added, removed = len(ix), 0
    ix.save(out)
    print(f"indexed {added} new file(s), removed {removed}; {len(ix)} in {out} "
          f"({ix.kind}, {ix.metric_name}, dim {ix.dim}); skipped {len(ix.skipped)} unreadable file(s)")
    for f, why in ix.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..retrieval.index import load_index
    from ..retrieval.search import search

    ix = load_index(args.index)
    metric = load_metric(args.metric or ix.metric_ref, device=args.device, weights=args.weights)
    results = search(ix, metric, args.queries, k=args.k, tau=args.tau)
    if args.json:
        print_json([r.to_dict() for r in results])
        return 0
    for r in results:
        print(f"{r.query}{_top1_note(r)}")
        for n in r.neighbours:
            extra = ""
            if n.duplicate is not None:
                extra = f"  {'duplicate' if n.duplicate else 'distinct'}"
                if n.duplicate_radius is not None:
                    extra += (f" (certified to l2 {n.duplicate_radius:.4g})" if n.duplicate_radius > 0 else
                              f" (not certified: d = {n.distance:.6g} is at the threshold {args.tau:g} within float error)")
            print(f"  {n.distance:.6f}  {n.path}{extra}")
    return 0


def _top1_note(r) -> str:
    """The top-1 certificate in words; a zero radius is a (near-)tie, said as such, not as 'radius 0'."""
    if r.top1_radius is None:
        return ""
    if r.top1_radius > 0:
        return f"  top-1 certified l2 radius {r.top1_radius:.4g}"
    d = [n.distance for n in r.neighbours[:2]]
    pair = f" (d = {d[0]:.6g} and {d[1]:.6g})" if len(d) == 2 else f" (d = {d[0]:.6g}; rerun with -k 2 to see the runner-up)"
    return ("  top-1 not certified: the two nearest stored images are equally close to the query within float "
            f"error{pair}, so an arbitrarily small change of the query can swap them")

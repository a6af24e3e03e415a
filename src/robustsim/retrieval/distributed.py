"""Build an index of a collection with many workers (torchrun / torch.distributed, gloo or NCCL).

Why: embedding millions of images is the slow part of near-duplicate detection and needs no
communication, so it scales by splitting the file list. Each worker loads one model replica, embeds
its contiguous slice of the (sorted) file list and writes its own shard; rank 0 then commits the
shards with one atomic manifest write (:mod:`.index`'s sharded layout). Row order equals the order of
a one-machine :func:`~robustsim.retrieval.index.build_index`, so the result is the same index, stored
in pieces. ``robustsim search`` and ``robustsim serve --index`` load the folder as one index.

Running it
----------
One machine, N local workers (torchrun is launched for you, rendezvous on 127.0.0.1)::

    robustsim index-distributed PHOTOS/ --out gallery.shards --workers 4

A cluster (every node sees PHOTOS/ and OUT/ on a shared file system; run on each node)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \\
        -m robustsim.retrieval.distributed PHOTOS/ --out /shared/gallery.shards --device cuda

Workers only exchange small objects (a build token, per-shard counts, skipped files) through the
process group; the embeddings go straight to the shared file system. A worker that fails makes the
whole run fail before the manifest is written, so a half-built index is never committed (an earlier
index in the same folder stays valid until the new manifest replaces it).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

def add_arguments(p: argparse.ArgumentParser) -> None:
    from .index import KINDS

    p.add_argument("folder", help="folder of images (searched recursively; every worker must see it)")
    p.add_argument("--out", "-o", required=True, help="sharded index folder to write (MANIFEST.json + one shard per worker)")
    p.add_argument("--metric", "-m", default=None, help="metric name or saved .safetensors (default: the shipped default)")
    p.add_argument("--workers", type=int, default=2,
                   help="local workers when not already running under torchrun (default 2)")
    p.add_argument("--kind", choices=KINDS, default="exact", help="FAISS kind built when the index is loaded")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (each worker takes cuda:LOCAL_RANK)")
    p.add_argument("--stats", default=None, help="write the run's timing (images/s) as JSON to this file")


def cmd_index_distributed(args: argparse.Namespace) -> int:
    """Under torchrun: be one worker. Otherwise: launch torchrun with ``--workers`` local processes."""
    from ..errors import InputError

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        run_worker(args)
        return 0
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if not Path(args.folder).expanduser().is_dir():
        raise InputError(f"{args.folder}: not a directory")
    return launch_local(args)


def _forwarded(args: argparse.Namespace) -> List[str]:
    out = [str(Path(args.folder)), "--out", str(args.out), "--kind", args.kind, "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--device", args.device, "--hnsw-m", str(args.hnsw_m),
           "--ef-search", str(args.ef_search)]
    for flag, v in (("--metric", args.metric), ("--nlist", args.nlist), ("--nprobe", args.nprobe), ("--stats", args.stats)):
        if v is not None:
            out += [flag, str(v)]
    return out


def launch_local(args: argparse.Namespace) -> int:
    """torchrun on this machine: static rendezvous on 127.0.0.1, gloo over the loopback interface."""
    from ..train.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(args.workers),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "robustsim.retrieval.distributed", *_forwarded(args)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # local workers talk over loopback only
    return subprocess.call(cmd, env=env)


def _shard_params(args: argparse.Namespace) -> Dict[str, Any]:
    if args.kind == "ivf":
        return {k: v for k, v in (("nlist", args.nlist), ("nprobe", args.nprobe)) if v is not None}
    if args.kind == "hnsw":
        return {"M": args.hnsw_m, "ef_search": args.ef_search}
    return {}


def run_worker(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """One rank: embed this rank's slice into its shard; rank 0 commits the manifest. Returns the
    run's statistics on rank 0 (None elsewhere)."""
    import torch
    import torch.distributed as dist

    from .. import hub
    from ..hub import resolve_device as device_from_arg
    from ..errors import InputError
    from .index import (MANIFEST, SHARD_SUFFIX, Index, identity, find_images, metric_label, read_manifest,
                        weights_hash, write_manifest)

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    torch.set_num_threads(max(1, int(args.threads)))
    device = device_from_arg(f"cuda:{local_rank}" if args.device == "cuda" else args.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    try:
        out = Path(args.out).expanduser()
        t_start = time.perf_counter()
        files = find_images(args.folder)  # sorted: every rank sees the same list
        if not files:
            raise InputError(f"{args.folder}: no image files found")
        lo, hi = rank * len(files) // world, (rank + 1) * len(files) // world
        metric = hub.load(args.metric or hub.DEFAULT_MODEL, device=device)
        metric.eval()
        if not getattr(metric, "has_embedding", False):
            raise InputError(f"{metric_label(metric)} has no embedding: an index needs a cosine/embedding metric")
        token = [secrets.token_hex(4) if rank == 0 else None]
        dist.broadcast_object_list(token, src=0)  # one name prefix per build: never overwrite a committed shard
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        t0 = time.perf_counter()
        mine = files[lo:hi]
        dim = _probe_dim(metric, mine)
        part = Index(metric_name=metric_label(metric), weights_sha256=weights_hash(metric), dim=dim or 0,
                     certified=bool(getattr(metric, "certified", False)), kind="exact",
                     metric_ref=_metric_ref(args.metric))
        if dim:
            part.add_images(metric, mine, batch_size=args.batch_size, progress=False)
        else:  # nothing readable in this slice: record why, contribute no shard
            part.skipped += [(str(f), f"{f}: unreadable") for f in mine]
        name = None
        if len(part):
            name = f"shard-{token[0]}-{rank:05d}{SHARD_SUFFIX}"
            part.save(out / name)
        t1 = time.perf_counter()
        info = {"rank": rank, "file": name, "count": len(part), "dim": int(part.dim) if len(part) else None,
                "files": hi - lo, "seconds": t1 - t0, "skipped": part.skipped}
        infos: List[Any] = [None] * world
        dist.all_gather_object(infos, info)
        t_end = time.perf_counter()
        if rank != 0:
            dist.barrier()
            return None
        try:
            stats = _commit(args, out, infos, part, identity, read_manifest, write_manifest, MANIFEST, t_end - t0,
                            t_end - t_start, world)
        finally:
            dist.barrier()
        print(json.dumps(stats), flush=True)
        for _, why in (s for i in infos for s in i["skipped"]):
            print(f"skipped: {why}", file=sys.stderr)
        return stats
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _commit(args, out: Path, infos, part, identity, read_manifest, write_manifest, MANIFEST, embed_s, total_s, world):
    from ..errors import InputError

    shards = [{"file": i["file"], "count": i["count"]} for i in sorted(infos, key=lambda i: i["rank"]) if i["count"]]
    if not shards:
        raise InputError(f"{args.folder}: none of the image files could be read")
    dims = {i["dim"] for i in infos if i["count"]}
    if len(dims) != 1:
        raise InputError(f"workers disagree on the embedding size: {sorted(dims)}")
    part.dim = dims.pop()
    part.kind, part.params = args.kind, _shard_params(args)
    old = read_manifest(out)["shards"] if (out / MANIFEST).is_file() else []
    write_manifest(out, identity(part), shards)  # the commit point
    keep = {s["file"] for s in shards}
    for s in old:  # shards of the replaced build: unreferenced now
        if s["file"] not in keep:
            try:
                (out / s["file"]).unlink()
            except OSError:
                pass
    n = sum(s["count"] for s in shards)
    stats = {"workers": world, "images": n, "skipped": sum(len(i["skipped"]) for i in infos),
             "embed_seconds": round(embed_s, 3), "total_seconds": round(total_s, 3),
             "images_per_s": round(n / embed_s, 3) if embed_s > 0 else None,
             "per_worker": [{"rank": i["rank"], "images": i["count"], "seconds": round(i["seconds"], 3)} for i in infos],
             "out": str(out)}
    if args.stats:
        Path(args.stats).expanduser().write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def _probe_dim(metric: Any, files: List[Path]) -> Optional[int]:
    """The embedding size, from the first readable file of this worker's slice (None: none readable)."""
    import torch

    from ..errors import InputError
    from ..images import load_image

    min_size = max(2, int(getattr(metric, "min_size", 1)))
    dev = next((p.device for p in metric.parameters()), torch.device("cpu"))
    for f in files:
        try:
            x = load_image(f, min_size=min_size)
        except (InputError, OSError):
            continue
        with torch.no_grad():
            return int(metric.embed(x.to(dev)).shape[1])
    return None


def _metric_ref(ref: Optional[str]) -> str:
    from .. import hub

    ref = ref or hub.DEFAULT_MODEL
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.is_file() else ref


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m robustsim.retrieval.distributed`` (what torchrun runs on each worker)."""
    from ..errors import RobustsimError

    p = argparse.ArgumentParser(prog="robustsim.retrieval.distributed", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        if "RANK" not in os.environ:
            return cmd_index_distributed(args)
        run_worker(args)
        return 0
    except (RobustsimError, FileNotFoundError, PermissionError) as e:
        print(f"robustsim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover - run by torchrun
    sys.exit(main())

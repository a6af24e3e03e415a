"""A persistent embedding index of an image folder: file paths + unit embeddings + a FAISS index.

Why: retrieval and near-duplicate detection need the gallery embedded once, stored with enough
identity (metric name, a hash of its weights, the embedding size) that a later search with another
model is refused instead of silently returning nonsense.

The index is one file (safetensors container, written to a temporary name, fsynced and renamed, so
a crash never leaves a half-written index under the real name), or a *sharded* folder of such files
committed by an atomically replaced manifest (see "sharded layout" below: many workers, cheap appends):

- tensors ``embeddings`` (M×D float32 unit vectors, row i = file i), ``gnorms`` (M, float64: ||g(x)||
  of the raw features, certified metrics only), ``paths`` (UTF-8 JSON list as uint8), ``faiss``
  (the serialised FAISS index as uint8; empty for the exact kind, which is rebuilt on load);
- metadata ``robustsim-index``: JSON with format, metric name/reference, weights sha256, dim,
  kind and its parameters, and a sha256 of every tensor's bytes (detects corruption).

Kinds: ``"exact"`` (``IndexFlatIP``, brute-force inner product), ``"ivf"`` (``IndexIVFFlat`` with
inner product; ``nlist`` lists, ``nprobe`` probed) and ``"hnsw"`` (``IndexHNSWFlat``, inner product;
``M`` links, ``ef_search``). Row i of the FAISS index is always row i of ``embeddings``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..atomic import fsync_dir, write_atomic
from ..hub import publish
from ..images import IMAGE_SUFFIXES, check_images, list_images, load_image
from ..metrics.embedding import NORM_EPS, EmbeddingMetric

FORMAT = "robustsim-index/1"
KINDS = ("exact", "ivf", "hnsw")
PathLike = Union[str, os.PathLike]


def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError(f"retrieval needs FAISS: pip install 'robustsim[retrieval]' ({e})") from None
    return faiss


def weights_hash(metric: torch.nn.Module) -> str:
    """sha256 over the metric's state dict (sorted names, dtype, shape, raw bytes): same weights, same hash."""
    h = hashlib.sha256()
    for name, t in sorted(metric.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def metric_label(metric: Any) -> str:
    return getattr(metric, "name", "") or type(metric).__name__


def find_images(folder: PathLike) -> List[Path]:
    """Every image file (io's suffixes) under ``folder``, recursively, hidden files/dirs skipped, sorted."""
    return list_images(folder, recursive=True)


def _raw_features(metric: Any, x: torch.Tensor) -> torch.Tensor:
    g = metric.features(x).flatten(1)
    if getattr(metric, "center", False):
        g = g - g.mean(dim=1, keepdim=True)
    return g


def embed_batch(metric: Any, images: Sequence[torch.Tensor]) -> Tuple[np.ndarray, np.ndarray]:
    """Unit embeddings (float32) and raw-feature norms (float64; NaN when the metric has no `features`)
    of 1×3×H×W images, batching those of equal size (each image is embedded at its own size)."""
    n = len(images)
    emb: List[Optional[np.ndarray]] = [None] * n
    gn = np.full(n, np.nan)
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, x in enumerate(images):
        groups.setdefault(tuple(x.shape[-2:]), []).append(i)
    dev = next((p.device for p in metric.parameters()), torch.device("cpu"))
    with torch.no_grad():
        for idx in groups.values():
            x = torch.cat([images[i] for i in idx]).to(dev)
            if getattr(metric, "certified", False) and type(metric).embed_checked is EmbeddingMetric.embed_checked:
                # one forward pass for both: embed = normalize(features), exactly as EmbeddingMetric does it
                raw = _raw_features(metric, check_images(x, "image", getattr(metric, "min_size", 1)))
                e = F.normalize(raw, dim=1, eps=NORM_EPS).float().cpu().numpy()
                g = raw.double().norm(dim=1).cpu().numpy()
            else:
                e = metric.embed(x).float().cpu().numpy()
                g = np.full(len(idx), np.nan)
            for j, i in enumerate(idx):
                emb[i], gn[i] = e[j], g[j]
    return np.stack(emb).astype(np.float32), gn


@dataclass
class Index:
    """Stored gallery: ``paths[i]`` has unit embedding ``embeddings[i]`` (and ``gnorms[i]``)."""

    metric_name: str
    weights_sha256: str
    dim: int
    certified: bool
    kind: str = "exact"
    params: Dict[str, Any] = field(default_factory=dict)
    paths: List[str] = field(default_factory=list)
    embeddings: np.ndarray = None  # type: ignore[assignment]
    gnorms: np.ndarray = None  # type: ignore[assignment]
    metric_ref: str = ""
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    _faiss_index: Any = None
    _ivf_lists: Any = None  # cache of ivf_lists(); dropped on every edit

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown index kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.embeddings is None:
            self.embeddings = np.zeros((0, self.dim), dtype=np.float32)
        if self.gnorms is None:
            self.gnorms = np.full(len(self.embeddings), np.nan)

    def __len__(self) -> int:
        return len(self.paths)

    # ------------------------------------------------------------------ identity
    def check_metric(self, metric: Any) -> None:
        """Refuse a metric other than the one the index was built with (name and weights hash)."""
        name, digest = metric_label(metric), weights_hash(metric)
        if name != self.metric_name or digest != self.weights_sha256:
            raise InputError(
                f"index was built with metric {self.metric_name!r} (weights sha256 {self.weights_sha256[:12]}) "
                f"but the search uses {name!r} (weights sha256 {digest[:12]}); rebuild the index or use that metric"
            )

    # ------------------------------------------------------------------ FAISS
    @property
    def faiss_index(self):
        if self._faiss_index is None:
            self._faiss_index = self._build_faiss(train=True)
        return self._faiss_index

    def extended(self, paths: List[str], emb: np.ndarray, gn: np.ndarray) -> "Index":
        """A new Index with rows appended; ``ix`` is left untouched (searches may be reading it).

        The FAISS structure is cloned and extended (an IVF keeps its trained lists), so the copy costs one
        pass over the stored vectors, not a rebuild.
        """
        new = Index(metric_name=self.metric_name, weights_sha256=self.weights_sha256, dim=self.dim,
                    certified=self.certified, kind=self.kind, params=dict(self.params),
                    paths=list(self.paths) + list(paths),
                    embeddings=np.concatenate([self.embeddings, np.asarray(emb, dtype=np.float32)]),
                    gnorms=np.concatenate([self.gnorms, np.asarray(gn, dtype=np.float64)]), metric_ref=self.metric_ref)
        if self._faiss_index is not None:
            fi = _faiss().clone_index(self._faiss_index)
            fi.add(np.ascontiguousarray(emb, dtype=np.float32))
            new._faiss_index = fi
        return new

    def _build_faiss(self, train: bool, trained=None):
        faiss = _faiss()
        x = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        d = self.dim
        if self.kind == "exact":
            ix = faiss.IndexFlatIP(d)
        elif self.kind == "hnsw":
            ix = faiss.IndexHNSWFlat(d, int(self.params.get("M", 32)), faiss.METRIC_INNER_PRODUCT)
            ix.hnsw.efConstruction = int(self.params.get("ef_construction", 80))
            ix.hnsw.efSearch = int(self.params.get("ef_search", 64))
        else:
            if trained is not None:
                ix = trained
                ix.reset()
            else:
                if len(x) == 0:
                    raise InputError("an IVF index needs at least one embedding to train on")
                nlist = int(self.params.get("nlist") or max(1, min(int(4 * math.sqrt(len(x))), len(x) // 39 or 1)))
                self.params["nlist"] = nlist
                quant = faiss.IndexFlatIP(d)
                ix = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
                ix.cp.seed = int(self.params.get("seed", 0))
                ix.train(x)
            ix.nprobe = int(self.params.get("nprobe") or max(1, ix.nlist // 8))
            self.params["nprobe"] = int(ix.nprobe)
        if len(x):
            ix.add(x)
        return ix

    def ivf_lists(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centroids L×D float64, list of each row (M,), radius of each list = max ||b - centroid||).

        Used for sound pruning: for a unit query u, every b in list l has <u, b> <= <u, c_l> + r_l.
        Computed once per state of the index (assigning every row costs one coarse search of the gallery).
        """
        if self._ivf_lists is not None:
            return self._ivf_lists
        ix = self.faiss_index
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(ix)
        cent = ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float64)
        _, assign = ivf.quantizer.search(np.ascontiguousarray(self.embeddings, dtype=np.float32), 1)
        assign = assign[:, 0]
        e = self.embeddings.astype(np.float64)
        dist = np.linalg.norm(e - cent[assign], axis=1)
        rad = np.zeros(ivf.nlist)
        np.maximum.at(rad, assign, dist)
        self._ivf_lists = (cent, assign, rad)
        return self._ivf_lists

    # ------------------------------------------------------------------ editing
    def add_images(self, metric: Any, files: Iterable[PathLike], batch_size: int = 32, progress: bool = True,
                   root: Optional[PathLike] = None) -> int:
        """Embed and append image files (already indexed paths are skipped); unreadable files are
        skipped and listed in ``self.skipped``. Returns the number added."""
        from tqdm.auto import tqdm

        self.check_metric(metric)
        have = set(self.paths)
        todo = [str(Path(f)) for f in files]
        todo = [f for f in dict.fromkeys(todo) if f not in have]
        min_size = max(2, int(getattr(metric, "min_size", 1)))
        added_paths, added_emb, added_g = [], [], []
        for s in tqdm(range(0, len(todo), batch_size), desc=f"index {self.metric_name}", disable=not progress or None):
            imgs, ok = [], []
            for f in todo[s:s + batch_size]:
                try:
                    imgs.append(load_image(f, min_size=min_size))
                    ok.append(f)
                except (InputError, OSError) as e:
                    self.skipped.append((f, str(e)))
            if not imgs:
                continue
            e, g = embed_batch(metric, imgs)
            added_paths += ok
            added_emb.append(e)
            added_g.append(g)
        if added_paths:
            self._append(added_paths, np.concatenate(added_emb), np.concatenate(added_g))
        return len(added_paths)

    def _append(self, paths: List[str], emb: np.ndarray, gn: np.ndarray) -> None:
        if emb.shape[1] != self.dim:
            raise InputError(f"embedding dimension mismatch: index has {self.dim}, new embeddings have {emb.shape[1]}")
        self.paths += paths
        self._ivf_lists = None
        self.embeddings = np.concatenate([self.embeddings, emb.astype(np.float32)])
        self.gnorms = np.concatenate([self.gnorms, gn.astype(np.float64)])
        if self._faiss_index is not None:
            if self.kind == "ivf" and not self._faiss_index.is_trained:  # pragma: no cover
                self._faiss_index = None
            else:
                self._faiss_index.add(np.ascontiguousarray(emb, dtype=np.float32))

    def add_embeddings(self, paths: Sequence[str], emb: np.ndarray, gnorms: Optional[np.ndarray] = None) -> None:
        """Append precomputed unit embeddings (benchmarks, tests, other pipelines)."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(paths):
            raise InputError(f"add_embeddings needs one row per path, got {emb.shape} for {len(paths)} paths")
        gn = np.full(len(paths), np.nan) if gnorms is None else np.asarray(gnorms, dtype=np.float64)
        self._append([str(p) for p in paths], emb, gn)

    def remove(self, paths: Iterable[PathLike]) -> int:
        """Remove files (by stored path, or any path under a removed folder). Returns how many."""
        drop = {str(Path(p)) for p in paths}
        keep = [i for i, p in enumerate(self.paths) if p not in drop and not any(p.startswith(d + os.sep) for d in drop)]
        n = len(self.paths) - len(keep)
        if n == 0:
            return 0
        self.paths = [self.paths[i] for i in keep]
        self._ivf_lists = None
        self.embeddings = self.embeddings[keep]
        self.gnorms = self.gnorms[keep]
        if self._faiss_index is not None:
            # rows must stay aligned with positions: re-add the kept vectors (IVF keeps its trained lists)
            trained = self._faiss_index if self.kind == "ivf" else None
            self._faiss_index = self._build_faiss(train=False, trained=trained)
        return n

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike) -> Path:
        """Write the index to one file atomically (temporary file in the same folder, then rename)."""
        from safetensors.numpy import save_file

        path = Path(path).expanduser()
        if path.is_dir():
            raise InputError(f"{path} is a folder{' (a sharded index: use save_sharded or append_shard)' if is_sharded(path) else ''}; "
                             "an index file needs a file name")
        faiss_bytes = np.zeros(0, dtype=np.uint8)
        if self.kind != "exact":
            faiss_bytes = _faiss().serialize_index(self.faiss_index)
        tensors = {
            "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32).reshape(-1, self.dim),
            "gnorms": np.ascontiguousarray(self.gnorms, dtype=np.float64),
            "paths": np.frombuffer(json.dumps(self.paths).encode(), dtype=np.uint8).copy(),
            "faiss": np.ascontiguousarray(faiss_bytes, dtype=np.uint8),
        }
        meta = {
            "format": FORMAT, "metric": self.metric_name, "metric_ref": self.metric_ref,
            "weights_sha256": self.weights_sha256, "dim": self.dim, "certified": self.certified,
            "kind": self.kind, "params": self.params, "count": len(self.paths),
            "sha256": {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in tensors.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"robustsim-index": json.dumps(meta)})
            _fsync_file(tmp)  # the bytes are on disk before the rename makes them the index
            publish(tmp, path)
            fsync_dir(path.parent)  # and the rename itself survives a power cut, not only a killed process
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def _fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- sharded layout
#
# Why: a collection too large for one machine is embedded by several workers at once (see
# :mod:`robustsim.retrieval.distributed`), each writing its own file; and a service that adds images
# one upload at a time should not rewrite a million-row file per upload. A *sharded index* is a folder
#
#     MANIFEST.json            {"format": SHARDS_FORMAT, identity (metric, weights sha256, dim, certified,
#                               kind, params, metric_ref), "shards": [{"file", "count"}, ...]}
#     shard-00000.rsidx ...    ordinary single-file indexes (kind "exact": embeddings only)
#
# The manifest is the commit record: a shard counts once the manifest names it, and the manifest is
# replaced atomically (temp file, fsync, rename) only after the shard file is complete on disk. A crash
# at any moment leaves either the previous manifest (the new shard is an ignored orphan) or the new one.
# Loading concatenates the shards in manifest order into one :class:`Index` of the manifest's kind, so
# search(), certificates and the service work on a folder exactly as on a single file.

SHARDS_FORMAT = "robustsim-index-shards/1"
MANIFEST = "MANIFEST.json"
SHARD_SUFFIX = ".rsidx"


def is_sharded(path: PathLike) -> bool:
    """True for a sharded index folder (or its MANIFEST.json)."""
    p = Path(path).expanduser()
    return (p.is_dir() and (p / MANIFEST).is_file()) or (p.name == MANIFEST and p.is_file())


def identity(ix: "Index") -> Dict[str, Any]:
    return {"metric": ix.metric_name, "metric_ref": ix.metric_ref, "weights_sha256": ix.weights_sha256,
            "dim": ix.dim, "certified": ix.certified, "kind": ix.kind, "params": dict(ix.params)}


def read_manifest(folder: PathLike) -> Dict[str, Any]:
    """The manifest of a sharded index folder (InputError when missing, corrupt or foreign)."""
    folder = Path(folder).expanduser()
    if folder.name == MANIFEST:
        folder = folder.parent
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise InputError(f"{folder}: not a sharded index (no {MANIFEST})")
    try:
        man = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{mpath}: corrupt manifest ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(man, dict) or man.get("format") != SHARDS_FORMAT or not isinstance(man.get("shards"), list):
        raise InputError(f"{mpath}: not a robustsim shard manifest (format {man.get('format') if isinstance(man, dict) else '?'!r})")
    return man


def write_manifest(folder: PathLike, identity: Dict[str, Any], shards: Sequence[Dict[str, Any]]) -> Path:
    """Commit a list of shard files (each already complete on disk) as the folder's index, atomically."""
    folder = Path(folder).expanduser()
    for s in shards:
        f = folder / s["file"]
        if not f.is_file():
            raise InputError(f"{folder}: shard {s['file']} does not exist; refusing to commit a manifest naming it")
    man = {"format": SHARDS_FORMAT, **identity, "count": int(sum(int(s["count"]) for s in shards)),
           "shards": [{"file": str(s["file"]), "count": int(s["count"])} for s in shards]}
    path = folder / MANIFEST
    write_atomic(path, json.dumps(man, indent=1) + "\n")
    return path


def shard_name(i: int) -> str:
    return f"shard-{int(i):05d}{SHARD_SUFFIX}"


def _next_shard_name(folder: Path, taken: Iterable[str]) -> str:
    """A shard file name used neither by the manifest nor by an orphan left by a crash."""
    taken = set(taken) | {p.name for p in folder.glob("shard-*" + SHARD_SUFFIX)}
    i = len(taken)
    while shard_name(i) in taken:
        i += 1
    return shard_name(i)


def _shard_of(ix: "Index", rows: Optional[slice] = None) -> "Index":
    """An exact-kind copy of (some rows of) ``ix``: shards store embeddings, the manifest the kind."""
    rows = rows or slice(None)
    return Index(metric_name=ix.metric_name, weights_sha256=ix.weights_sha256, dim=ix.dim, certified=ix.certified,
                 kind="exact", params={}, paths=list(ix.paths[rows]), embeddings=ix.embeddings[rows],
                 gnorms=ix.gnorms[rows], metric_ref=ix.metric_ref)


def save_sharded(ix: "Index", folder: PathLike, shard_size: int = 1_000_000) -> Path:
    """Write ``ix`` as a sharded index folder of ``ceil(len/shard_size)`` shards (replacing its manifest)."""
    if int(shard_size) < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    old = read_manifest(folder)["shards"] if (folder / MANIFEST).is_file() else []
    taken = [s["file"] for s in old]
    for start in range(0, max(len(ix), 1), int(shard_size)):
        name = _next_shard_name(folder, taken + [s["file"] for s in shards])
        part = _shard_of(ix, slice(start, start + int(shard_size)))
        part.save(folder / name)
        shards.append({"file": name, "count": len(part)})
    path = write_manifest(folder, identity(ix), shards)
    for s in old:  # the previous shards are no longer referenced: remove them after the commit
        if s["file"] not in {t["file"] for t in shards}:
            try:
                (folder / s["file"]).unlink()
            except OSError:
                pass
    return path


def append_shard(folder: PathLike, delta: "Index") -> Path:
    """Commit the rows of ``delta`` as one new shard of an existing sharded index (an O(len(delta)) write).

    The shard is written completely (atomically, fsynced) under a fresh name, then the manifest is
    replaced: a crash in between leaves an orphan file that no manifest names, never a lost or
    half-written entry.
    """
    folder = Path(folder).expanduser()
    man = read_manifest(folder)
    if delta.metric_name != man["metric"] or delta.weights_sha256 != man["weights_sha256"] or delta.dim != int(man["dim"]):
        raise InputError(f"{folder}: the new rows come from {delta.metric_name!r} (dim {delta.dim}), the index from "
                         f"{man['metric']!r} (dim {man['dim']})")
    if len(delta) == 0:
        return folder / MANIFEST
    name = _next_shard_name(folder, [s["file"] for s in man["shards"]])
    _shard_of(delta).save(folder / name)
    identity = {k: man[k] for k in ("metric", "metric_ref", "weights_sha256", "dim", "certified", "kind", "params") if k in man}
    return write_manifest(folder, identity, list(man["shards"]) + [{"file": name, "count": len(delta)}])


def _load_sharded(folder: Path) -> "Index":
    man = read_manifest(folder)
    if folder.name == MANIFEST:
        folder = folder.parent
    if not man["shards"]:
        raise InputError(f"{folder}: the manifest lists no shards")
    parts = []
    for s in man["shards"]:
        part = _load_file(folder / s["file"])
        if (part.metric_name != man["metric"] or part.weights_sha256 != man["weights_sha256"]
                or part.dim != int(man["dim"])):
            raise InputError(f"{folder / s['file']}: shard built with {part.metric_name!r} (dim {part.dim}), "
                             f"the manifest says {man['metric']!r} (dim {man['dim']})")
        if len(part) != int(s["count"]):
            raise InputError(f"{folder / s['file']}: shard holds {len(part)} entries, the manifest says {s['count']}")
        parts.append(part)
    ix = Index(metric_name=man["metric"], weights_sha256=man["weights_sha256"], dim=int(man["dim"]),
               certified=bool(man["certified"]), kind=man.get("kind", "exact"), params=dict(man.get("params") or {}),
               paths=[p for part in parts for p in part.paths],
               embeddings=np.concatenate([part.embeddings for part in parts]),
               gnorms=np.concatenate([part.gnorms for part in parts]), metric_ref=man.get("metric_ref", ""))
    if ix.kind != "exact":  # IVF/HNSW structures are built over the union, once, on load
        ix._faiss_index = ix._build_faiss(train=True)
    return ix


def load_index(path: PathLike) -> Index:
    """Read an index: a file written by :meth:`Index.save`, or a sharded index folder (its shards
    concatenated in manifest order). A corrupt, truncated or foreign file is an InputError."""
    path = Path(path).expanduser()
    if is_sharded(path):
        return _load_sharded(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder without {MANIFEST} is not an index")
    return _load_file(path)


def _load_file(path: Path) -> Index:
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"{path}: no such index file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get("robustsim-index")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"{path}: corrupt or truncated index file ({type(e).__name__}: {str(e)[:120]})") from None
    if raw is None:
        raise InputError(f"{path}: not a robustsim index (no 'robustsim-index' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise InputError(f"{path}: corrupt index metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path}: unsupported index format {meta.get('format') if isinstance(meta, dict) else '?'!r}")
    for k, digest in (meta.get("sha256") or {}).items():
        if k not in tensors or hashlib.sha256(tensors[k].tobytes()).hexdigest() != digest:
            raise InputError(f"{path}: corrupt index file (checksum of '{k}' does not match)")
    if set(tensors) != {"embeddings", "gnorms", "paths", "faiss"}:
        raise InputError(f"{path}: corrupt index file (tensors {sorted(tensors)})")
    emb = tensors["embeddings"]
    paths = json.loads(tensors["paths"].tobytes().decode())
    dim = int(meta["dim"])
    if emb.ndim != 2 or emb.shape[1] != dim or len(paths) != emb.shape[0] or len(tensors["gnorms"]) != emb.shape[0]:
        raise InputError(f"{path}: inconsistent index (dim {dim}, embeddings {emb.shape}, {len(paths)} paths)")
    ix = Index(metric_name=meta["metric"], weights_sha256=meta["weights_sha256"], dim=dim,
               certified=bool(meta["certified"]), kind=meta["kind"], params=dict(meta.get("params") or {}),
               paths=list(paths), embeddings=np.array(emb, dtype=np.float32), gnorms=np.array(tensors["gnorms"]),
               metric_ref=meta.get("metric_ref", ""))
    if ix.kind != "exact":
        try:
            ix._faiss_index = _faiss().deserialize_index(np.array(tensors["faiss"]))
        except Exception as e:
            raise InputError(f"{path}: corrupt FAISS index inside the file ({e})") from None
        if ix._faiss_index.ntotal != len(ix) or ix._faiss_index.d != dim:
            raise InputError(f"{path}: FAISS index holds {ix._faiss_index.ntotal}×{ix._faiss_index.d}, expected {len(ix)}×{dim}")
    return ix


def build_index(metric: Any, folder: PathLike, kind: str = "exact", batch_size: int = 32, progress: bool = True,
                metric_ref: str = "", **params: Any) -> Index:
    """Embed every image under ``folder`` (recursive) with ``metric`` and build a ``kind`` index.

    ``params``: ivf: nlist, nprobe, seed; hnsw: M, ef_construction, ef_search. Unreadable files are
    skipped (``index.skipped`` lists them with the reason); an empty folder, or one where nothing
    could be read, is an InputError.
    """
    if not getattr(metric, "has_embedding", False):
        raise InputError(f"{metric_label(metric)} has no embedding: an index needs a cosine/embedding metric (not LPIPS)")
    files = find_images(folder)
    if not files:
        raise InputError(f"{folder}: no image files found (suffixes {' '.join(IMAGE_SUFFIXES)})")
    metric.eval()
    min_size = max(2, int(getattr(metric, "min_size", 1)))
    probe = None
    for f in files:  # the embedding dimension, from the first readable image
        try:
            probe = load_image(f, min_size=min_size)
            break
        except (InputError, OSError):
            continue
    if probe is None:
        raise InputError(f"{folder}: none of the {len(files)} image files could be read")
    with torch.no_grad():
        dim = int(metric.embed(probe).shape[1])
    ix = Index(metric_name=metric_label(metric), weights_sha256=weights_hash(metric), dim=dim,
               certified=bool(getattr(metric, "certified", False)), kind=kind, params=dict(params),
               metric_ref=metric_ref or metric_label(metric))
    ix.add_images(metric, files, batch_size=batch_size, progress=progress)
    if len(ix) == 0:
        raise InputError(f"{folder}: none of the {len(files)} image files could be read")
    ix._faiss_index, ix._ivf_lists = ix._build_faiss(train=True), None
    return ix


__all__ = ["Index", "build_index", "load_index", "find_images", "weights_hash", "embed_batch", "KINDS", "FORMAT",
           "SHARDS_FORMAT", "MANIFEST", "is_sharded", "read_manifest", "write_manifest", "save_sharded", "append_shard",
           "shard_name"]

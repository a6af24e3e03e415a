"""Resumable batch loop: per-batch results on disk, a rerun skips finished batches.

Why: an attacked evaluation of a large metric takes hours; an interruption must not lose them. A run
directory holds ``config.json`` (what is being computed) and one ``batches/<task>/<k>.pt`` per batch
(plain tensors/lists, written atomically, read with ``weights_only=True``). A rerun with the same
config loads finished batches instead of recomputing them; a run directory made for a different
config is refused (so results never mix).

Broken items: a batch that hits a :class:`~robustsim.errors.CorruptImageError` while loading is
rebuilt without that item (``on_corrupt="skip"``, the default: the item is counted and named in the
report) or stops the run (``on_corrupt="fail"``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import CorruptImageError
from ..errors import InputError

PathLike = Union[str, os.PathLike]
ON_CORRUPT = ("skip", "fail")


def metric_fingerprint(metric) -> str:
    """sha256 prefix of a metric's parameters and buffers: a run directory never mixes two weight sets."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(metric.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


class BatchStore:
    """Per-batch results of one evaluation run, on disk (``run_dir``) or in memory (``run_dir=None``)."""

    def __init__(self, run_dir: Optional[PathLike], config: Dict[str, Any]):
        self.dir = None if run_dir is None else Path(run_dir)
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))
        self._mem: Dict[str, Dict[str, Any]] = {}
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "config.json"
        if cfg.is_file():
            old = json.loads(cfg.read_text())
            if old != self.config:
                diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
                raise InputError(f"run directory {self.dir} holds an evaluation with a different configuration "
                                 f"(differs in: {', '.join(diff)}); use another --out or delete it")
        else:
            tmp = cfg.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.config, indent=2, sort_keys=True))
            os.replace(tmp, cfg)

    def _path(self, task: str, k: int) -> Path:
        return self.dir / "batches" / task / f"{k:06d}.pt"

    def get(self, task: str, k: int) -> Optional[Dict[str, Any]]:
        if self.dir is None:
            return self._mem.get(f"{task}/{k}")
        p = self._path(task, k)
        if not p.is_file():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # a file cut short by a crash: recompute that batch
            p.unlink(missing_ok=True)
            return None

    def put(self, task: str, k: int, value: Dict[str, Any]) -> None:
        if self.dir is None:
            self._mem[f"{task}/{k}"] = value
            return
        p = self._path(task, k)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        torch.save(value, tmp)
        os.replace(tmp, p)


def load_items(dataset, indices: Sequence[int], on_corrupt: str = "skip") -> Tuple[List[int], List[tuple], List[Tuple[int, str]]]:
    """Load dataset items; returns (kept indices, items, skipped (index, message))."""
    if on_corrupt not in ON_CORRUPT:
        raise InputError(f"on_corrupt must be 'skip' or 'fail', got {on_corrupt!r}")
    kept, items, skipped = [], [], []
    for i in indices:
        try:
            items.append(dataset[i])
            kept.append(int(i))
        except CorruptImageError as e:
            if on_corrupt == "fail":
                raise
            skipped.append((int(i), str(e)))
    return kept, items, skipped


def collate(items: List[tuple]) -> List[torch.Tensor]:
    """Stack a list of tuples field by field (images stacked, numbers to tensors)."""
    out = []
    for field in zip(*items):
        if isinstance(field[0], torch.Tensor):
            out.append(torch.stack(list(field)))
        else:
            out.append(torch.as_tensor(field))
    return out


def run_batches(
    task: str,
    store: BatchStore,
    dataset,
    fn: Callable[[List[torch.Tensor]], Dict[str, torch.Tensor]],
    batch_size: int = 32,
    indices: Optional[Sequence[int]] = None,
    on_corrupt: str = "skip",
    progress: bool = True,
    desc: str = "",
) -> Dict[str, Any]:
    """Apply ``fn`` to every batch not already in ``store``; return all batches concatenated.

    ``fn`` receives the collated batch and returns a dict of per-item CPU tensors. The result has those
    keys plus ``index`` (dataset indices) and ``skipped`` (list of (index, message)).
    """
    from tqdm.auto import tqdm

    if int(batch_size) <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}")
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not idx:
        raise InputError("empty selection: nothing to evaluate")
    chunks = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    parts: List[Dict[str, Any]] = []
    with tqdm(total=len(idx), desc=desc or task, unit="item", disable=not progress or None) as bar:
        for k, chunk in enumerate(chunks):
            got = store.get(task, k)
            if got is None:
                kept, items, skipped = load_items(dataset, chunk, on_corrupt)
                got = {"index": torch.as_tensor(kept, dtype=torch.long), "skipped": skipped}
                if items:
                    out = fn(collate(items))
                    got.update({k2: v.detach().cpu() for k2, v in out.items()})
                store.put(task, k, got)
            parts.append(got)
            bar.update(len(chunk))
    keys = sorted({k for p in parts for k in p} - {"index", "skipped"})
    res: Dict[str, Any] = {"index": torch.cat([p["index"] for p in parts]),
                           "skipped": [tuple(s) for p in parts for s in p["skipped"]]}
    for key in keys:
        res[key] = torch.cat([p[key] for p in parts if key in p])
    if res["index"].numel() == 0:
        raise InputError(f"every item was skipped ({len(res['skipped'])} unreadable); first: {res['skipped'][0][1]}")
    return res

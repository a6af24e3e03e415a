"""Training checkpoints: atomic writes, safe reads, RNG state, and the check that a checkpoint fits the run.

A checkpoint holds model, optimizer, scheduler and the global RNG states plus the step, so a resumed
run continues exactly (on CPU bit for bit); it is refused when written by another recipe or for
another architecture (:class:`CheckpointMismatch`).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..errors import InputError

CHECKPOINT = "checkpoint.pt"
CKPT_VERSION = 1


class CheckpointMismatch(InputError):
    """A checkpoint written by another recipe or architecture than the one being resumed."""


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a training checkpoint safely (weights_only: tensors and plain containers only)."""
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path} is not a robustsim training checkpoint: {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != "robustsim-train" or "fingerprint" not in ck:
        raise InputError(f"{path} is not a robustsim training checkpoint")
    return ck


def checkpoint_step(path: Optional[Path]) -> Any:
    try:
        return int(torch.load(str(path), map_location="cpu", weights_only=True)["step"])
    except Exception:
        return "?"


def check_fingerprint(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint written by another recipe or for another architecture."""
    if saved.get("recipe") != current["recipe"]:
        raise CheckpointMismatch(
            f"{path} was written by recipe {saved.get('recipe')!r}, not {current['recipe']!r}; "
            f"refusing to resume (use another out_dir or --resume never)"
        )
    if saved.get("arch") != current["arch"]:
        a, b = saved.get("arch") or {}, current["arch"]
        diff = first_difference(a, b)
        raise CheckpointMismatch(
            f"{path} was written for another architecture ({diff}); refusing to resume "
            f"(use another out_dir or --resume never)"
        )


def first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    return f"{where or 'model'}: checkpoint {a!r} vs config {b!r}"

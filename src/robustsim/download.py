"""Checksummed, resumable downloads that refuse to run in offline mode.

Offline mode (``ROBUSTSIM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) is checked *before* any network
object is created, so an offline process never opens a socket.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional

from .errors import OfflineError, WeightsError

_TRUE = {"1", "true", "yes", "on"}
CHUNK = 1 << 20


def is_offline() -> bool:
    """True when ROBUSTSIM_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("ROBUSTSIM_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: Optional[str], what: str = "") -> None:
    """Raise WeightsError unless the file's sha256 starts with ``expected`` (a full hash or a prefix)."""
    if not expected:
        return
    got = sha256_file(path)
    if not got.startswith(expected.lower()):
        raise WeightsError(f"checksum mismatch for {what or path}: expected sha256 {expected}, got {got}")


def download(url: str, dest: os.PathLike, sha256: Optional[str] = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resuming a partial ``dest.part``), verify, then move into place.

    On checksum mismatch the downloaded bytes are deleted and WeightsError is raised: a corrupt or
    tampered file is never kept where a later run would pick it up.
    """
    dest = Path(dest)
    if is_offline():
        raise OfflineError(
            f"offline mode is on (ROBUSTSIM_OFFLINE/HF_HUB_OFFLINE) and {dest.name} is not available locally; "
            f"download it from {url} and place it at {dest}, or pass its path explicitly"
        )
    import urllib.request  # imported here: nothing network-related is touched in offline mode

    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "robustsim"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except Exception as e:  # network errors of every kind become one clear message
        raise WeightsError(f"could not download {url}: {e}") from e
    with resp:
        resumed = start and getattr(resp, "status", 200) == 206
        if not resumed:
            start = 0
        total = resp.headers.get("Content-Length")
        total = int(total) + start if total else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress or None
        ) as bar:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    try:
        check_sha256(part, sha256, url)
    except WeightsError:
        part.unlink(missing_ok=True)
        raise
    shutil.move(str(part), str(dest))
    return dest

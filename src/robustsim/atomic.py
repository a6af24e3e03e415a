"""Atomic file writes: readers see the old file or the new one, never half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from .hub import publish

PathLike = Union[str, os.PathLike]


def fsync_dir(folder: PathLike) -> None:
    """Make a rename inside ``folder`` survive a power cut, not only a killed process."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_atomic(path: PathLike, data: Union[str, bytes]) -> None:
    """Write a small file via temp file + fsync + rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else {"newline": ""})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

"""Reading image files inside datasets: one decoder, one error type, one policy for broken files.

Dataset readers (BAPPS, NIGHTS, user folders) decode through :func:`read_image`, so a broken file
always raises :class:`CorruptImageError` naming the file. What happens next is the caller's policy
(see :func:`robustsim.evaluate.common.iter_batches`): evaluation *skips and counts* broken
triplets by default and lists them in its report; ``on_corrupt="fail"`` stops at the first one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch

from ..errors import InputError

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


class CorruptImageError(InputError):
    """An image file inside a dataset exists but cannot be decoded."""


def read_image(path: PathLike) -> torch.Tensor:
    """Decode an image file to 3×H×W float32 in [0, 1] (grayscale/palette/RGBA converted to RGB).

    RGBA is composited on white; 16-bit images are scaled by their own range (I;16 -> /65535).
    Raises FileNotFoundError-like InputError when missing, CorruptImageError when undecodable.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = arr / (65535.0 if arr.max() > 255 else 255.0)
                arr = np.repeat(arr[..., None], 3, axis=2)
                return torch.from_numpy(np.clip(arr, 0, 1)).permute(2, 0, 1).float().contiguous()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im2 = Image.alpha_composite(bg, rgba).convert("RGB")
            else:
                im2 = im.convert("RGB")
            arr = np.asarray(im2, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image {p}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def list_images(folder: PathLike, recursive: bool = False) -> List[Path]:
    """Image files in a folder, sorted by name (deterministic order); InputError if the folder is missing."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise InputError(f"image folder not found: {d}")
    it = d.rglob("*") if recursive else d.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def stack_images(images: Sequence[torch.Tensor], what: str = "images") -> torch.Tensor:
    """Stack equally sized 3×H×W images into a batch, with an error naming the size mismatch."""
    if not images:
        raise InputError(f"{what}: nothing to stack (empty selection)")
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise InputError(f"{what}: images of different sizes {sorted(shapes)} cannot form one batch")
    return torch.stack(list(images))

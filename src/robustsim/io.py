"""Image files <-> tensors, and the validation every public entry point applies to tensors.

Tensors are never silently fixed: a tensor outside [0, 1], with NaN/Inf, of the wrong rank or
channel count is a :class:`~robustsim.errors.InputError`. Files, on the other hand, are converted
to RGB on the way in, with these documented rules:

- PNG, JPEG, BMP, WebP, TIFF (and GIF) are read; the result is a 1×3×H×W float32 tensor in [0, 1].
- Grayscale and bilevel images are replicated to three channels; palette images are expanded
  (keeping their transparency); CMYK (e.g. Adobe JPEGs) and YCbCr are converted to RGB by Pillow's
  plain formula (no ICC colour management).
- **Transparency is composited on white** (``background``): a pixel with alpha a and colour c becomes
  a·c + (1 - a)·background, computed in floating point.
- 8-bit values become v/255 and **16-bit values v/65535 exactly** (16-bit PNGs are decoded with pypng,
  16-bit RGB TIFFs with tifffile, because Pillow reduces them to 8 bits).
- The EXIF orientation tag is applied, so the tensor is the image as a viewer shows it.
- **Animated / multi-frame files** (GIF, APNG, WebP, multi-page TIFF): the first frame is used and a
  ``UserWarning`` says so.
- **Size limits**: images with more than ``ROBUSTSIM_MAX_PIXELS`` pixels (default 50 million) are refused
  from their header, before anything is decoded; images with a side below ``min_size`` (default 2: a
  1×1 image carries no structure) are refused too. Missing, unreadable, truncated and non-image files
  raise InputError with one line naming the file and the problem.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import InputError

RANGE_TOL = 1e-6
DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
PathLike = Union[str, os.PathLike]

# EXIF orientation -> numpy transform of an H×W×C array (what a viewer does to display it).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def check_images(x: torch.Tensor, name: str = "x", min_size: int = 1) -> torch.Tensor:
    """Validate an image batch N×3×H×W in [0, 1]; return it as a floating tensor.

    A single 3×H×W image is *not* accepted: the API is batched, and guessing would hide bugs.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{name}: expected a batch N×3×H×W (rank 4), got rank {x.dim()} with shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise InputError(
            f"{name}: expected 3 (RGB) channels, got {x.shape[1]}; convert grayscale/RGBA images first "
            "(robustsim.io.load_image does this for files)"
        )
    n, _, h, w = x.shape
    if n == 0:
        raise InputError(f"{name}: empty batch")
    if min(h, w) < min_size:
        raise InputError(f"{name}: image of {h}×{w} is smaller than the metric's minimum size {min_size}×{min_size}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating tensor in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise InputError(f"{name}: contains NaN or Inf")
        lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise InputError(f"{name}: values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}] (images in [-1, 1] or 0-255?)")
    return x


# --------------------------------------------------------------------------- reading


def pixel_limit() -> int:
    """The pixel limit: $ROBUSTSIM_MAX_PIXELS, default 50 million (about 600 MB as float32 RGB)."""
    raw = os.environ.get("ROBUSTSIM_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise InputError(f"ROBUSTSIM_MAX_PIXELS must be a number of pixels, got {raw!r}") from None
    if value <= 0:
        raise InputError(f"ROBUSTSIM_MAX_PIXELS must be positive, got {raw!r}")
    return value


def _open_pil(path: Path, limit: int):
    """Open lazily (header only) with Pillow, mapping every failure to one-line InputErrors."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # our own limit is checked below; Pillow's guard must not be stricter
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(f)
    except Image.DecompressionBombError as e:
        f.close()
        raise InputError(f"{path}: image too large to decode safely ({e}); limit {limit:,} pixels (ROBUSTSIM_MAX_PIXELS)") from None
    except UnidentifiedImageError:
        f.close()
        head = _png_header(path)
        if head is not None and 0 in head[:2]:
            raise InputError(f"{path}: empty image ({head[0]}×{head[1]})") from None
        raise InputError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except Exception as e:  # corrupt headers raise assorted errors inside Pillow's plugins
        f.close()
        raise InputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w * h > limit:
        im.close()
        f.close()
        raise InputError(
            f"{path}: image of {w}×{h} = {w * h:,} pixels exceeds the limit of {limit:,} pixels "
            "(set ROBUSTSIM_MAX_PIXELS to raise it)"
        )
    return im, f


def _png_header(path: Path) -> Optional[Tuple[int, int, int]]:
    """(width, height, bit depth) from a PNG's IHDR, or None if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24]


def _read_png16(path: Path) -> np.ndarray:
    """16-bit PNG -> H×W×C uint16 (C = 1, 2, 3 or 4), via pypng (Pillow truncates 16-bit RGB)."""
    try:
        import png
    except ImportError as e:  # pragma: no cover - pypng is a core dependency
        raise InputError(f"{path}: 16-bit PNGs need pypng (pip install pypng)") from e
    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    return a.reshape(h, w, info["planes"])


def _read_tiff16(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError as e:
        raise InputError(f"{path}: 16-bit colour TIFFs need tifffile (pip install tifffile)") from e
    a = np.asarray(tifffile.imread(str(path), key=0))
    return a[..., None] if a.ndim == 2 else a


def _composite(a: np.ndarray, background: Tuple[float, float, float]) -> np.ndarray:
    """H×W×{1,2,3,4} float64 in [0,1] -> H×W×3, alpha composited on ``background``."""
    c = a.shape[2]
    color = a[..., :1] if c in (1, 2) else a[..., :3]
    if c in (1, 2):
        color = np.repeat(color, 3, axis=2)
    if c in (2, 4):
        alpha = a[..., -1:]
        color = color * alpha + np.asarray(background, dtype=np.float64) * (1.0 - alpha)
    return color


def _pil_to_unit(im, path: Path) -> np.ndarray:
    """A decoded Pillow frame -> H×W×C float64 in [0, 1] (C = 1..4)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
    elif mode in ("CMYK", "YCbCr", "HSV"):
        im = im.convert("RGB")
    elif mode == "LAB":
        raise InputError(f"{path}: CIELAB images are not supported; convert to RGB first")
    if im.mode.startswith("I;16"):
        return np.asarray(im, dtype=np.uint16)[..., None].astype(np.float64) / 65535.0
    if im.mode in ("I", "F"):
        raise InputError(f"{path}: 32-bit {'float' if im.mode == 'F' else 'integer'} images are not supported; save as 8 or 16 bit")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA")
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    return a.astype(np.float64) / 255.0


def load_image(
    path: PathLike,
    mode: str = "RGB",
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0),
    min_size: int = 2,
    max_pixels: Optional[int] = None,
) -> torch.Tensor:
    """Read an image file as a 1×3×H×W float32 tensor in [0, 1] (see the module notes for the rules).

    Args:
        mode: "RGB" (default) or "L" for a 1×1×H×W luminance tensor (ITU-R 601 weights, after compositing).
        background: RGB in [0, 1] that transparent pixels are composited on (white by default).
        min_size: smallest accepted side (default 2; a metric may need more).
        max_pixels: pixel limit (default: :func:`pixel_limit`, i.e. $ROBUSTSIM_MAX_PIXELS or 50 million).
    """
    if mode not in ("RGB", "L"):
        raise InputError(f"unknown mode {mode!r}; use 'RGB' or 'L'")
    path = Path(path).expanduser()
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    im, f = _open_pil(path, limit)
    try:
        w, h = im.size
        if w == 0 or h == 0:
            raise InputError(f"{path}: empty image ({w}×{h})")
        if min(w, h) < min_size:
            raise InputError(f"{path}: image of {w}×{h} is smaller than the minimum size {min_size}×{min_size}")
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            warnings.warn(f"{path}: {frames} frames (animated or multi-page); using the first frame", UserWarning, stacklevel=2)
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except Exception:  # a broken EXIF block should not make the pixels unreadable
            orientation = 1
        try:
            if im.format == "PNG" and (_png_header(path) or (0, 0, 8))[2] == 16:
                a = _read_png16(path).astype(np.float64) / 65535.0
            elif im.format == "TIFF" and im.mode in ("RGB", "RGBA") and max(_tiff_bits(im)) > 8:
                a = _read_tiff16(path).astype(np.float64) / 65535.0
            else:
                im.seek(0)
                im.load()
                a = _pil_to_unit(im, path)
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{path}: not enough memory to decode {w}×{h} pixels; lower ROBUSTSIM_MAX_PIXELS") from None
        except Exception as e:  # truncated or corrupt data
            raise InputError(f"{path}: cannot decode image data ({type(e).__name__}: {e})") from None
    finally:
        im.close()
        f.close()
    if orientation in _ORIENT:
        a = _ORIENT[orientation](a)
    rgb = _composite(a, background)
    if mode == "L":
        rgb = rgb @ np.array([0.299, 0.587, 0.114])
        rgb = rgb[..., None]
    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    return t.clamp_(0.0, 1.0).contiguous()


def _tiff_bits(im) -> Tuple[int, ...]:
    bits = im.tag_v2.get(258, (8,)) if hasattr(im, "tag_v2") else (8,)
    return tuple(bits) if isinstance(bits, (tuple, list)) else (int(bits),)


def load_images(paths: Sequence[PathLike], size: Optional[Tuple[int, int]] = None, **kwargs) -> torch.Tensor:
    """Read several files into one N×3×H×W batch.

    All images must have the same size, unless ``size`` is given: then each is resized to it
    (bicubic with antialiasing, clamped to [0, 1]).
    """
    if len(paths) == 0:
        raise InputError("no image files given")
    images = []
    for p in paths:
        x = load_image(p, **kwargs)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0, 1)
        if images and x.shape != images[0].shape:
            raise InputError(
                f"{p}: size {tuple(x.shape[-2:])} differs from {paths[0]}'s {tuple(images[0].shape[-2:])}; pass size=(H, W)"
            )
        images.append(x)
    return torch.cat(images)


def list_images(folder: PathLike) -> List[Path]:
    """Image files directly inside ``folder`` (by suffix, hidden files skipped), sorted by name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


# --------------------------------------------------------------------------- writing


def save_image(x: torch.Tensor, path: PathLike, bits: int = 8, quality: int = 95) -> Path:
    """Write one image (1×3×H×W or 3×H×W in [0, 1]) atomically: a temporary file, then a rename.

    The format follows the suffix. ``bits=16`` writes a 16-bit PNG (round(v·65535)); otherwise values
    are rounded to 8 bits. A failed write leaves no partial file behind.
    """
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x[None]
    x = check_images(x, "image")
    if x.shape[0] != 1:
        raise InputError(f"save_image writes one image, got a batch of {x.shape[0]}")
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix)
    if fmt is None:
        raise InputError(f"{path}: unknown image suffix {suffix or '(none)'}; use one of .png .jpg .bmp .webp .tif")
    if bits not in (8, 16) or (bits == 16 and fmt != "PNG"):
        raise InputError("bits=16 is supported for PNG only; use bits=8 otherwise")
    a = x[0].detach().to("cpu", torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if bits == 16:
            import png

            q = np.round(a * 65535).astype(np.uint16)
            h, w, _ = q.shape
            with open(tmp, "wb") as f:
                png.Writer(w, h, greyscale=False, bitdepth=16).write(f, q.reshape(h, w * 3))
        else:
            from PIL import Image

            q = np.round(a * 255).astype(np.uint8)
            extra = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
            Image.fromarray(q, "RGB").save(tmp, format=fmt, **extra)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

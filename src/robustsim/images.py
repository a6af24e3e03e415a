"""Image files <-> tensors, and the validation every public entry point applies to tensors.

What users hold -- file paths, PIL images, numpy H×W×C arrays (uint8 or float), C×H×W tensors,
grayscale, lists of mixed sizes -- becomes a metric's N×3×H×W input through :func:`preprocess` (or
:func:`preprocess_for` a given metric, i.e. ``metric.preprocess``), the one place where conversions
happen, each documented there.

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
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._compat import install_import_hook
from .errors import CorruptImageError, InputError

# Every `import robustsim` imports this module (metrics.base validates with it). The hook costs nothing
# until someone imports torchvision -- e.g. a user's own `import lpips` after `import robustsim` -- and
# then lets a CUDA-built torchvision import next to a CPU torch (see robustsim._compat).
install_import_hook()

RANGE_TOL = 1e-6
DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
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


MIN_IMAGE_SIDE = 2
"""Smallest image side anything in robustsim accepts, files or tensors, API or CLI: a 1×1 image carries
no structure, and a metric that silently upsampled it would return a number that means nothing."""


def check_images(x: torch.Tensor, name: str = "x", min_size: int = MIN_IMAGE_SIDE) -> torch.Tensor:
    """Validate an image batch N×3×H×W in [0, 1]; return it as a floating tensor.

    A single 3×H×W image is *not* accepted: the API is batched, and guessing would hide bugs
    (:func:`preprocess` is the documented way to turn what users hold into a batch). Sides below
    ``max(min_size, MIN_IMAGE_SIDE)`` are refused, so the API and the CLI agree on the minimum size.
    """
    return _check(x, name, max(int(min_size), MIN_IMAGE_SIDE))


def _check(x: torch.Tensor, name: str, min_size: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{name}: expected a batch N×3×H×W (rank 4), got rank {x.dim()} with shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise InputError(
            f"{name}: expected 3 (RGB) channels, got {x.shape[1]}; convert grayscale/RGBA images first "
            "(robustsim.images.load_image does this for files)"
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
            raise CorruptImageError(f"{path}: empty image ({head[0]}×{head[1]})") from None
        raise CorruptImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except Exception as e:  # corrupt headers raise assorted errors inside Pillow's plugins
        f.close()
        raise CorruptImageError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
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
    min_size: int = MIN_IMAGE_SIDE,
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
            raise CorruptImageError(f"{path}: empty image ({w}×{h})")
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
            raise CorruptImageError(f"{path}: cannot decode image data ({type(e).__name__}: {e})") from None
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


def read_image(path: PathLike, min_size: int = 1) -> torch.Tensor:
    """One image file as 3×H×W float32 in [0, 1]: :func:`load_image` for dataset readers.

    A file that exists but cannot be decoded raises :class:`~robustsim.errors.CorruptImageError`
    (evaluation skips and counts those); a missing file or an image over the pixel limit is an
    ordinary InputError.
    """
    return load_image(path, min_size=min_size)[0]


def list_images(folder: PathLike, recursive: bool = False) -> List[Path]:
    """Image files inside ``folder`` (by suffix; hidden files and, with ``recursive``, hidden folders
    skipped), sorted by path."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory{'' if folder.exists() else ' (not found)'}")
    if not recursive:
        return sorted(
            p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(out)



# --------------------------------------------------------------------------- preprocess: what users hold -> a batch


Size = Union[int, Tuple[int, int]]


def _hw(size: Optional[Size]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"size must be an int or (H, W) of positive ints, got {size!r}")
    return hw  # type: ignore[return-value]


def _unit_from_integers(a, what: str):
    """uint8 -> v/255, uint16 -> v/65535, bool -> 0/1; other integer types are ambiguous and refused."""
    dt = str(a.dtype).replace("torch.", "")
    if dt == "uint8":
        return a / 255.0
    if dt == "uint16":
        return a / 65535.0
    if dt == "bool":
        return a * 1.0
    raise InputError(f"{what}: integer dtype {dt} is ambiguous; pass uint8 (0-255), uint16 (0-65535) or floats in [0, 1]")


def _from_pil(im, what: str, background: Tuple[float, float, float]) -> torch.Tensor:
    """A Pillow image -> 1×3×H×W in [0, 1], by the same rules as files (EXIF orientation, alpha on ``background``)."""
    from PIL import ImageOps

    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not make the pixels unusable
        pass
    rgb = _composite(_pil_to_unit(im, what), background)  # type: ignore[arg-type]
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None].clamp_(0, 1)


def _from_array(a: np.ndarray, what: str, background: Tuple[float, float, float]) -> torch.Tensor:
    """numpy H×W (grayscale) or H×W×C (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) -> 1×3×H×W."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        hint = "; numpy images are H×W×C (channels last): for C×H×W use a.transpose(1, 2, 0)" if a.ndim == 3 and a.shape[0] in (1, 3, 4) else ""
        raise InputError(f"{what}: expected a numpy image H×W or H×W×C with C in 1..4, got shape {a.shape}{hint}")
    if a.dtype.kind in "biu":
        a = _unit_from_integers(a, what)
    elif a.dtype.kind != "f":
        raise InputError(f"{what}: numpy dtype {a.dtype} is not an image type (use uint8, uint16 or floats in [0, 1])")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{what}: contains NaN or Inf")
    lo, hi = float(a.min()), float(a.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise InputError(f"{what}: float values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}] (0-255 data: pass uint8)")
    rgb = _composite(np.clip(a, 0, 1), background)
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]


def _from_tensor(t: torch.Tensor, what: str, background: Tuple[float, float, float]) -> torch.Tensor:
    """torch H×W, C×H×W or N×C×H×W (C = 1, 3 or 4; uint8 allowed) -> N×3×H×W, channels first as torch has it."""
    t = t.detach()
    if t.dim() == 2:
        t = t[None]
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] not in (1, 3, 4):
        hint = "; torch images are channels first (C×H×W): for H×W×C use t.permute(2, 0, 1)" if t.dim() == 4 and t.shape[-1] in (1, 3, 4) else ""
        raise InputError(f"{what}: expected a tensor H×W, C×H×W or N×C×H×W with C in (1, 3, 4), got shape {tuple(t.shape)}{hint}")
    if not t.is_floating_point():
        t = _unit_from_integers(t, what)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] == 4:
        alpha = t[:, 3:]
        bg = torch.tensor(background, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
        t = t[:, :3] * alpha + bg * (1 - alpha)
    return t


def to_batch(image: Any, what: str = "image", background: Tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """One image in any supported form (see :func:`preprocess`) -> N×3×H×W float tensor in [0, 1], not resized."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, background=background, min_size=1)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, what, background)
    if isinstance(image, np.ndarray):
        return _from_array(image, what, background)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _from_pil(image, what, background)
    raise InputError(
        f"{what}: cannot use a {type(image).__name__} as an image; give a file path, a PIL image, a numpy H×W×C "
        "array, a torch C×H×W / N×C×H×W tensor, or a list of these"
    )


def _resize(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Bicubic with antialiasing (what the CLI and :func:`load_images` use), clamped back into [0, 1]."""
    if tuple(x.shape[-2:]) == hw:
        return x
    return torch.nn.functional.interpolate(x, size=hw, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def preprocess(
    images: Any,
    size: Optional[Size] = None,
    min_size: int = MIN_IMAGE_SIDE,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Turn what users hold into the N×3×H×W float batch in [0, 1] that every metric takes.

    The one documented conversion path (the metrics themselves never guess). Accepted, alone or in
    a list / tuple mixing them:

    - a **file path** (str or Path): read by :func:`load_image` (EXIF orientation, 16-bit, alpha on white);
    - a **PIL image** in any mode (grayscale, palette, RGBA, CMYK, ...), by the same rules as files;
    - a **numpy array** H×W or H×W×C (channels last, C = 1, 2, 3, 4): uint8 is divided by 255, uint16
      by 65535, floats must already lie in [0, 1];
    - a **torch tensor** H×W, C×H×W or N×C×H×W (channels first, C = 1, 3, 4): uint8 / uint16 are scaled
      the same way, floats must lie in [0, 1].

    Grayscale is replicated to RGB; alpha is composited on ``background`` (white). Images of different
    sizes are resized (bicubic, antialiased) to ``size`` -- an int or (H, W) -- which is required then;
    with ``size`` every image is resized to it. Without it, equally sized images keep their size
    (a metric with a native resolution resizes inside, exactly as for any batch).
    Sides below ``max(min_size, 2)`` are refused, as everywhere in robustsim.

    Returns a contiguous tensor of ``dtype`` (float32 by default) on ``device``.
    """
    hw = _hw(size)
    floor = max(int(min_size), MIN_IMAGE_SIDE)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError("no images given")
    batches = [to_batch(im, f"image {i}" if len(items) > 1 else "image", background) for i, im in enumerate(items)]
    for i, b in enumerate(batches):
        h, w = b.shape[-2:]
        if min(h, w) < floor:
            where = items[i] if isinstance(items[i], (str, os.PathLike)) else (f"image {i}" if len(items) > 1 else "image")
            raise InputError(f"{where}: image of {h}×{w} is smaller than the minimum size {floor}×{floor}")
    if hw is None:
        sizes = sorted({tuple(b.shape[-2:]) for b in batches})
        if len(sizes) > 1:
            raise InputError(
                f"images have {len(sizes)} different sizes ({', '.join(f'{h}×{w}' for h, w in sizes[:4])}"
                f"{', ...' if len(sizes) > 4 else ''}); pass size=(H, W), or use metric.preprocess, which resizes to the metric's input size"
            )
    else:
        batches = [_resize(b.to(torch.float32), hw) for b in batches]
    x = torch.cat([b.to(device="cpu" if device is None else device, dtype=dtype) for b in batches])
    return check_images(x.contiguous(), "images", min_size=1 if hw is not None else floor)


def preprocess_for(metric: Any, images: Any, size: Optional[Size] = None, **kwargs: Any) -> torch.Tensor:
    """:func:`preprocess` for one metric: its minimum size, its device and dtype; mixed sizes go to its input size.

    This is what ``Metric.preprocess(images)`` does (DreamSim users know it as ``preprocess``). A metric
    with a native resolution (``metric.input_size``) receives images of any sizes resized to it; a metric
    without one (LPIPS) needs equally sized images or an explicit ``size``.
    """
    param = next(iter(metric.parameters()), None) if hasattr(metric, "parameters") else None
    kwargs.setdefault("device", param.device if param is not None else None)
    dtype = getattr(metric, "compute_dtype", None)  # Metric's own rule (its floating parameters' dtype)
    if not isinstance(dtype, torch.dtype):
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    kwargs.setdefault("dtype", dtype)
    kwargs.setdefault("min_size", int(getattr(metric, "min_size", 1)))
    if size is None and getattr(metric, "input_size", None) is not None:
        items = images if isinstance(images, (list, tuple)) else [images]
        if len(items) > 1:
            probe = [to_batch(im, f"image {i}") for i, im in enumerate(items)]
            if len({tuple(b.shape[-2:]) for b in probe}) > 1:
                return preprocess(probe, size=tuple(metric.input_size), **kwargs)
            images = probe
    return preprocess(images, size=size, **kwargs)


# --------------------------------------------------------------------------- writing


def save_image(x: torch.Tensor, path: PathLike, bits: int = 8, quality: int = 95) -> Path:
    """Write one image (1×3×H×W or 3×H×W in [0, 1]) atomically: a temporary file, then a rename.

    The format follows the suffix. ``bits=16`` writes a 16-bit PNG (round(v·65535)); otherwise values
    are rounded to 8 bits. A failed write leaves no partial file behind.
    """
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x[None]
    x = _check(x, "image", 1)  # writing any size is fine; only the metrics need structure
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

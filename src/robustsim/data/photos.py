"""Real photos available offline, their train/held-out split, distortions, and 2AFC suites built on them.

Why: BAPPS and NIGHTS cannot be downloaded here, but metrics still need real numbers. These suites
use real photographs shipped inside installed packages (plus any folder of the user's photos) and
synthetic distortions whose ordering is known by construction.

Photos (``BUILTIN``): scikit-image's bundled natural photographs and scikit-learn's two sample
images, each with its licence. Split: the photos named in :data:`HELDOUT` (and, for extra folders,
every photo whose name hashes into the held-out bucket, see :func:`split_of`) are **held out: no
training recipe may use them**; evaluation suites default to them. Use :func:`train_photos` /
:func:`heldout_photos`.

Suites (both torch Datasets returning ``(ref, x0, x1, label, judge)``, images 3×S×S in [0, 1];
``label`` is 0 when x0 is the closer one, ``judge`` the fraction preferring x1 as in BAPPS):

* :class:`OrderingSuite` -- a reference crop and the *same* distortion at two strengths with the same
  random realisation; the weaker one is the correct "closer" (``len(DISTORTIONS)`` = 11 kinds).
* :class:`TeacherSuite` -- two distortions of *different* kinds; the label is which is closer
  according to a reference metric (computed in batches at construction).

and :class:`RandomCrops` (multi-scale crops, flips, colour jitter) for distillation.

Everything is a pure function of (seed, index): item i is the same whatever the order, the number of
workers or the process that asks for it.
"""
from __future__ import annotations

import hashlib
import io as _io
import math
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import InputError

PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------- photo catalogue


@dataclass(frozen=True)
class PhotoSource:
    """One photograph: where it comes from, its licence, and how to load it."""

    name: str
    origin: str  # "skimage" | "sklearn" | "folder"
    licence: str
    gray: bool = False
    path: Optional[str] = None  # for folder photos (and informative for the others)

    @property
    def split(self) -> str:
        return split_of(self)

    def load(self) -> torch.Tensor:
        """The photo as 3×H×W float32 in [0, 1] (grayscale replicated to 3 channels)."""
        return _load_cached(self)


# (name, skimage function, gray, licence as stated in scikit-image's docstrings)
_SKIMAGE: Tuple[Tuple[str, str, bool, str], ...] = (
    ("astronaut", "astronaut", False, "public domain (NASA Great Images; no known copyright restrictions)"),
    ("chelsea", "chelsea", False, "CC0 (photographer Stefan van der Walt)"),
    ("coffee", "coffee", False, "CC0 (photographer Rachel Michetti, courtesy of Pikolo Espresso Bar)"),
    ("rocket", "rocket", False, "public domain (SpaceX launch photo of DSCOVR on Falcon 9)"),
    ("hubble_deep_field", "hubble_deep_field", False, "public domain (NASA)"),
    ("retina", "retina", False, "CC0 1.0 (Häggström, Wikimedia Commons fundus photograph)"),
    ("immunohistochemistry", "immunohistochemistry", False, "no known copyright restrictions (scikit-image)"),
    ("motorcycle_left", "stereo_motorcycle", False,
     "Middlebury 2014 stereo benchmark (Scharstein et al.), redistributed with scikit-image; no explicit licence"),
    ("camera", "camera", True, "CC0 (photographer Lav Varshney)"),
    ("moon", "moon", True, "no stated restrictions (scikit-image sample)"),
    ("coins", "coins", True, "no known copyright restrictions (Greek coins from Pompeii)"),
    ("brick", "brick", True, "CC0 (CC0Textures Bricks25)"),
    ("grass", "grass", True, "CC0 (CC0Textures Grass)"),
    ("gravel", "gravel", True, "CC0 (CC0Textures Gravel04)"),
    ("clock", "clock", True, "public domain (photographer Stefan van der Walt)"),
    ("cell", "cell", True, "CC0 (scikit-image)"),
)
_SKLEARN: Tuple[Tuple[str, str], ...] = (
    ("china", "CC BY 2.0, danielbuechele on Flickr (attribution required)"),
    ("flower", "CC BY 2.0, vultilion on Flickr (attribution required)"),
)

#: Photos no training recipe may use (evaluation only). Mix of colour and gray, several subjects.
HELDOUT = frozenset({"coffee", "rocket", "flower", "motorcycle_left", "coins", "grass"})
#: Extra-folder photos go to the held-out split when the first byte of sha256(file name) % 5 == 0 (~20 %).
EXTRA_HELDOUT_MODULUS = 5
#: Environment variable with extra photo folders (os.pathsep separated), added to every catalogue.
PHOTOS_ENV = "ROBUSTSIM_PHOTOS"

BUILTIN: Tuple[PhotoSource, ...] = tuple(
    [PhotoSource(n, "skimage", lic, gray, path=f"skimage.data.{fn}") for n, fn, gray, lic in _SKIMAGE]
    + [PhotoSource(n, "sklearn", lic, False, path=f"sklearn.datasets.load_sample_image('{n}.jpg')") for n, lic in _SKLEARN]
)
_SKIMAGE_FN = {n: fn for n, fn, _, _ in _SKIMAGE}


def split_of(src: PhotoSource) -> str:
    """``"heldout"`` or ``"train"``: by name for built-in photos, by a hash of the file name otherwise."""
    if src.origin != "folder":
        return "heldout" if src.name in HELDOUT else "train"
    digest = hashlib.sha256(Path(src.path or src.name).name.encode()).digest()
    return "heldout" if digest[0] % EXTRA_HELDOUT_MODULUS == 0 else "train"


def _folder_sources(folder: PathLike) -> List[PhotoSource]:
    from .folders import list_images

    out = []
    for p in list_images(folder):
        out.append(PhotoSource(f"{Path(folder).name}/{p.name}", "folder", "see the folder's own licence notes", False, str(p)))
    return out


def photo_sources(
    extra_dirs: Optional[Iterable[PathLike]] = None,
    include_gray: bool = True,
    builtin: bool = True,
) -> List[PhotoSource]:
    """All available photos: built-in ones, then those in ``extra_dirs`` and ``$ROBUSTSIM_PHOTOS``.

    Raises InputError for an extra folder that does not exist or holds no images.
    """
    srcs: List[PhotoSource] = [s for s in BUILTIN if include_gray or not s.gray] if builtin else []
    dirs = [Path(d) for d in (extra_dirs or [])]
    env = os.environ.get(PHOTOS_ENV, "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d.strip()]
    for d in dirs:
        found = _folder_sources(d)
        if not found:
            raise InputError(f"photo folder {d} contains no image files")
        srcs.extend(found)
    return srcs


def train_photos(extra_dirs: Optional[Iterable[PathLike]] = None, include_gray: bool = True) -> List[PhotoSource]:
    """Photos a training recipe may use (never any of :func:`heldout_photos`)."""
    return [s for s in photo_sources(extra_dirs, include_gray) if s.split == "train"]


def heldout_photos(extra_dirs: Optional[Iterable[PathLike]] = None, include_gray: bool = True) -> List[PhotoSource]:
    """Photos reserved for evaluation."""
    return [s for s in photo_sources(extra_dirs, include_gray) if s.split == "heldout"]


def select_photos(split: str = "heldout", extra_dirs: Optional[Iterable[PathLike]] = None, include_gray: bool = False) -> List[PhotoSource]:
    """Photos of a split (``train``, ``heldout`` or ``all``); InputError on an unknown split or an empty result."""
    if split not in ("train", "heldout", "all"):
        raise InputError(f"unknown photo split {split!r}; choose train, heldout or all")
    srcs = photo_sources(extra_dirs, include_gray)
    if split != "all":
        srcs = [s for s in srcs if s.split == split]
    if not srcs:
        raise InputError(f"no photos in split {split!r} (include_gray={include_gray})")
    return srcs


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise InputError(f"unexpected photo dtype {arr.dtype}")
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div_(255.0)


_SKIMAGE_FILE = {"motorcycle_left": "motorcycle_left.png", "clock": "clock_motion.png",
                 "immunohistochemistry": "ihc.png", "hubble_deep_field": "hubble_deep_field.jpg",
                 "rocket": "rocket.jpg", "retina": "retina.jpg"}


def _package_file(package: str, rel: str) -> Optional[Path]:
    """A data file inside an installed package, found without importing the package (sklearn is slow)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / rel
        if p.is_file():
            return p
    return None


def _read_array(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L") if im.mode in ("L", "I;16", "I") else im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()


@lru_cache(maxsize=64)
def _load_cached(src: PhotoSource) -> torch.Tensor:
    if src.origin == "skimage":
        f = _package_file("skimage", f"data/{_SKIMAGE_FILE.get(src.name, src.name + '.png')}")
        if f is not None:
            return _to_tensor(_read_array(f))
        import skimage.data  # fall back to scikit-image's own loader (it may fetch into its cache)

        out = getattr(skimage.data, _SKIMAGE_FN[src.name])()
        return _to_tensor(out[0] if isinstance(out, tuple) else out)
    if src.origin == "sklearn":
        f = _package_file("sklearn", f"datasets/images/{src.name}.jpg")
        if f is None:
            raise InputError(f"scikit-learn's sample image {src.name}.jpg is not installed (pip install scikit-learn)")
        return _to_tensor(_read_array(f))
    from .folders import read_image

    return read_image(src.path)


# --------------------------------------------------------------------------- distortions
# Each distortion maps (3×H×W in [0,1], strength s in [0,1], seed) -> 3×H×W in [0,1]. For a fixed seed
# the random realisation (noise pattern, direction, angle) is the same for every strength, and the
# change grows with s, so "weaker is closer" holds by construction. Spatial parameters scale with
# the image side relative to 64 px, so a suite means the same at 64 and 224.


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)


def _scale(img: torch.Tensor) -> float:
    return min(img.shape[-2:]) / 64.0


def _conv_same(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    kh, kw = kernel.shape
    x = F.pad(img[None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    k = kernel.to(img.dtype).expand(3, 1, kh, kw)
    return F.conv2d(x, k, groups=3)[0]


def _gauss1d(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Gaussian blur, sigma = (0.3 + 2.7 s) px at 64 px."""
    if s <= 0:
        return img.clone()
    sigma = (0.3 + 2.7 * s) * _scale(img)
    k = _gauss1d(sigma)
    r = min(k.numel() // 2, min(img.shape[-2:]) - 1)  # reflect padding needs radius < side
    k = k[k.numel() // 2 - r: k.numel() // 2 + r + 1]
    k = k / k.sum()
    return _conv_same(_conv_same(img, k[None, :]), k[:, None]).clamp(0, 1)


def gaussian_noise(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Additive white Gaussian noise of standard deviation 0.2 s (same pattern for every s)."""
    noise = torch.randn(img.shape, generator=_gen(seed))
    return (img + 0.2 * s * noise).clamp(0, 1)


def jpeg(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """JPEG round trip at quality round(90 - 85 s) (90 .. 5), PIL encoder, 4:2:0 subsampling."""
    from PIL import Image

    q = int(round(90 - 85 * s))
    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).float() / 255


def contrast(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Contrast reduction towards the image mean by a factor 1 - 0.8 s."""
    m = img.mean()
    return ((img - m) * (1 - 0.8 * s) + m).clamp(0, 1)


def brightness(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Brightness shift of ±0.4 s (sign drawn from the seed)."""
    sign = 1.0 if torch.rand((), generator=_gen(seed)) < 0.5 else -1.0
    return (img + sign * 0.4 * s).clamp(0, 1)


def colour_shift(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Per-channel offset of length 0.35 s along a random unit direction (a colour cast)."""
    v = torch.randn(3, generator=_gen(seed))
    v = v / v.norm().clamp_min(1e-8)
    return (img + 0.35 * s * v.view(3, 1, 1)).clamp(0, 1)


def pixelate(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Block averaging then nearest upsampling, block side 1 + 7 s px at 64 px."""
    h, w = img.shape[-2:]
    b = max(1.0, (1 + 7 * s) * _scale(img))
    if b <= 1.0:
        return img.clone()
    small = F.interpolate(img[None], size=(max(1, round(h / b)), max(1, round(w / b))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")[0]


def saturation(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Desaturation: blend towards the luma image (Rec. 601) by s."""
    luma = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    return (luma + (1 - s) * (img - luma)).clamp(0, 1)


def _line_kernel(length: float, angle: float) -> torch.Tensor:
    r = int(math.ceil(length / 2)) + 1
    size = 2 * r + 1
    k = torch.zeros(size, size, dtype=torch.float64)
    n = max(2, int(math.ceil(length * 4)))
    for t in torch.linspace(-length / 2, length / 2, n, dtype=torch.float64):
        x, y = r + float(t) * math.cos(angle), r + float(t) * math.sin(angle)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                if 0 <= y0 + dy < size and 0 <= x0 + dx < size:
                    k[y0 + dy, x0 + dx] += wy * wx
    return (k / k.sum()).float()


def motion_blur(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Linear motion blur of length 1 + 10 s px (at 64 px) along a random angle."""
    angle = float(torch.rand((), generator=_gen(seed))) * math.pi
    length = (1 + 10 * s) * _scale(img)
    k = _line_kernel(length, angle)
    if k.shape[0] >= min(img.shape[-2:]):
        raise InputError(f"motion blur of length {length:.1f} px does not fit a {tuple(img.shape[-2:])} image")
    return _conv_same(img, k).clamp(0, 1)


def salt_pepper(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Impulse noise: a fraction 0.15 s of pixels set to black or white (nested sets as s grows)."""
    g = _gen(seed)
    u = torch.rand(img.shape[-2:], generator=g)
    white = torch.rand(img.shape[-2:], generator=g) < 0.5
    out = img.clone()
    hit = u < 0.15 * s
    out[:, hit & white] = 1.0
    out[:, hit & ~white] = 0.0
    return out


def posterize(img: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """Colour quantisation to round(32 · 2^(-4 s)) levels per channel (32 .. 2)."""
    levels = max(2, int(round(32 * 2 ** (-4 * s))))
    return (img * (levels - 1)).round() / (levels - 1)


DISTORTIONS: Dict[str, Callable[[torch.Tensor, float, int], torch.Tensor]] = {
    "gaussian_blur": gaussian_blur,
    "gaussian_noise": gaussian_noise,
    "jpeg": jpeg,
    "contrast": contrast,
    "brightness": brightness,
    "colour_shift": colour_shift,
    "pixelate": pixelate,
    "saturation": saturation,
    "motion_blur": motion_blur,
    "salt_pepper": salt_pepper,
    "posterize": posterize,
}


def distort(img: torch.Tensor, kind: str, strength: float, seed: int = 0) -> torch.Tensor:
    """Apply distortion ``kind`` at ``strength`` in [0, 1] to a 3×H×W image in [0, 1]."""
    if kind not in DISTORTIONS:
        raise InputError(f"unknown distortion {kind!r}; choose from {', '.join(DISTORTIONS)}")
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"distortion strength must lie in [0, 1], got {strength}")
    if img.dim() != 3 or img.shape[0] != 3:
        raise InputError(f"distort expects one 3×H×W image, got shape {tuple(img.shape)}")
    return DISTORTIONS[kind](img, float(strength), int(seed)).clamp(0, 1).contiguous()


# --------------------------------------------------------------------------- crops


def _item_rng(seed: int, index: int, salt: str) -> np.random.Generator:
    """An RNG that depends only on (seed, index, salt): items are order- and worker-independent."""
    h = hashlib.sha256(f"{salt}:{int(seed)}:{int(index)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def crop_resize(photo: torch.Tensor, top: int, left: int, side: int, size: int) -> torch.Tensor:
    """Square crop then area/antialiased resize to size×size."""
    c = photo[:, top:top + side, left:left + side]
    if side == size:
        return c.clone()
    mode = dict(mode="area") if side > size else dict(mode="bicubic", align_corners=False)
    return F.interpolate(c[None], size=(size, size), **mode)[0].clamp(0, 1)


def random_crop(photo: torch.Tensor, rng: np.random.Generator, size: int, scale: Tuple[float, float]) -> torch.Tensor:
    """A random square crop whose side is ``scale`` × the photo's short side, resized to size×size."""
    h, w = photo.shape[-2:]
    short = min(h, w)
    side = int(round(short * rng.uniform(*scale)))
    side = max(min(side, short), min(size, short), 8)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    return crop_resize(photo, top, left, side, size)


MIN_CROP_STD = 0.04  # crops flatter than this (sky, black borders) are redrawn: distortions barely change them


def textured_crop(sources: Sequence[PhotoSource], rng: np.random.Generator, size: int,
                  scale: Tuple[float, float]) -> Tuple[torch.Tensor, PhotoSource]:
    """Draw (photo, crop) until the crop has pixel std >= MIN_CROP_STD (at most 20 tries)."""
    for _ in range(20):
        src = sources[int(rng.integers(len(sources)))]
        crop = random_crop(src.load(), rng, size, scale)
        if float(crop.std()) >= MIN_CROP_STD:
            return crop, src
    return crop, src


# --------------------------------------------------------------------------- suites


class TripletDataset(Dataset):
    """Base of every 2AFC dataset: items are ``(ref, x0, x1, label, judge)``.

    ``label`` (int64): 0 when x0 is the closer/correct one. ``judge`` (float32): fraction of judges
    preferring x1 (BAPPS convention; 0.0 or 1.0 for synthetic labels). :meth:`info` describes item i.
    """

    def info(self, i: int) -> Dict[str, object]:
        """Metadata of item i (photo, kind, ...), without decoding images where possible."""
        return {}

    def group(self, i: int) -> str:
        """The reporting group of item i (BAPPS category, NIGHTS ImageNet/non-ImageNet, distortion kind)."""
        return "all"

    def tensors(self, indices: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, ...]:
        """Stack items into batched tensors (ref, x0, x1, label, judge)."""
        idx = range(len(self)) if indices is None else indices
        items = [self[i] for i in idx]
        if not items:
            raise InputError("empty selection: no triplets to stack")
        ref, x0, x1, lab, j = zip(*items)
        return (torch.stack(ref), torch.stack(x0), torch.stack(x1),
                torch.as_tensor(lab, dtype=torch.long), torch.as_tensor(j, dtype=torch.float32))


def _check_common(n: int, size: int, split: str) -> None:
    if int(n) <= 0:
        raise InputError(f"suite size must be positive, got n={n}")
    if int(size) < 16:
        raise InputError(f"crop size must be at least 16 px, got {size}")


class _CropSuite(TripletDataset):
    """Shared set-up of the synthetic suites: n items drawn from (seed, index), each from a textured
    crop of one photo of ``split``, distorted by kinds from :data:`DISTORTIONS`."""

    def _setup(self, n, size, split, kinds, seed, extra_dirs, scale, include_gray, min_kinds: int = 1,
               too_few: str = "") -> None:
        _check_common(n, size, split)
        self.kinds = list(kinds) if kinds else list(DISTORTIONS)
        if len(self.kinds) < min_kinds:
            raise InputError(too_few)
        for k in self.kinds:
            if k not in DISTORTIONS:
                raise InputError(f"unknown distortion {k!r}; choose from {', '.join(DISTORTIONS)}")
        self.sources = select_photos(split, extra_dirs, include_gray)
        self.n, self.size, self.split, self.seed = int(n), int(size), split, int(seed)
        self.scale = tuple(scale)

    def __len__(self) -> int:
        return self.n

    def _draw(self, i: int, salt: str):
        """(rng, crop, photo source) of item i: the item's own RNG, after drawing its crop."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = _item_rng(self.seed, i, salt)
        crop, src = textured_crop(self.sources, rng, self.size, self.scale)
        return rng, crop, src


class OrderingSuite(_CropSuite):
    """Reference crop + one distortion at two strengths; the weaker is the correct "closer".

    Args:
        n: number of triplets. size: crop side (64 for LPIPS, 224 for ViT-like metrics).
        split: photo split (``heldout`` by default: evaluation never sees training photos).
        kinds: distortion kinds (default: all of :data:`DISTORTIONS`, cycled so each kind gets n/k items).
        weak, gap: weak strength ~ U(weak); strong = min(1, weak_s + U(gap)).
        scale: crop side as a fraction of the photo's short side.
        seed: everything is a function of (seed, index).
    """

    def __init__(self, n: int = 256, size: int = 64, split: str = "heldout", kinds: Optional[Sequence[str]] = None,
                 seed: int = 0, extra_dirs: Optional[Iterable[PathLike]] = None,
                 weak: Tuple[float, float] = (0.05, 0.45), gap: Tuple[float, float] = (0.3, 0.55),
                 scale: Tuple[float, float] = (0.2, 0.6), include_gray: bool = False):
        self._setup(n, size, split, kinds, seed, extra_dirs, scale, include_gray)
        self.weak, self.gap = tuple(weak), tuple(gap)

    def _params(self, i: int):
        rng, crop, src = self._draw(i, "ordering")
        kind = self.kinds[i % len(self.kinds)]
        s_weak = float(rng.uniform(*self.weak))
        s_strong = float(min(1.0, s_weak + rng.uniform(*self.gap)))
        dseed = int(rng.integers(2**62))
        swap = bool(rng.integers(2))  # True: the weak one goes to x1
        return crop, src, kind, s_weak, s_strong, dseed, swap

    def __getitem__(self, i: int):
        crop, _, kind, sw, ss, dseed, swap = self._params(i)
        weak = distort(crop, kind, sw, dseed)
        strong = distort(crop, kind, ss, dseed)
        x0, x1 = (strong, weak) if swap else (weak, strong)
        label = 1 if swap else 0
        return crop, x0, x1, label, float(label)

    def group(self, i: int) -> str:
        return self.kinds[i % len(self.kinds)]

    def info(self, i: int) -> Dict[str, object]:
        _, src, kind, sw, ss, _, swap = self._params(i)
        return {"photo": src.name, "kind": kind, "weak": sw, "strong": ss, "label": int(swap)}


class _PairSuite(_CropSuite):
    """Reference crop + two distortions of different kinds at independent strengths (unlabelled)."""

    def __init__(self, n, size, split, kinds, seed, extra_dirs, strength, scale, include_gray):
        self._setup(n, size, split, kinds, seed, extra_dirs, scale, include_gray, min_kinds=2,
                    too_few="a teacher-labelled suite needs at least two distortion kinds")
        self.strength = tuple(strength)

    def _params(self, i: int):
        rng, crop, src = self._draw(i, "teacher")
        a, b = rng.choice(len(self.kinds), size=2, replace=False)
        s0, s1 = (float(v) for v in rng.uniform(*self.strength, size=2))
        d0, d1 = (int(v) for v in rng.integers(2**62, size=2))
        return crop, src, self.kinds[a], self.kinds[b], s0, s1, d0, d1

    def images(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        crop, _, k0, k1, s0, s1, d0, d1 = self._params(i)
        return crop, distort(crop, k0, s0, d0), distort(crop, k1, s1, d1)


class TeacherSuite(_PairSuite):
    """Two distortions of different kinds; label = which one ``teacher`` finds closer to the reference.

    The teacher distances are computed once, in batches of ``batch_size``, at construction (shown with
    a progress bar); images are regenerated on demand. With ``cache_dir`` they are also saved there,
    keyed by a hash of the items and of the teacher's weights, and reused by the next suite with the
    same key (labelling thousands of triplets costs minutes on a CPU). Items whose teacher distances differ by less
    than ``min_gap`` are kept but flagged in :attr:`ambiguous` (useful for filtering).
    """

    def __init__(self, teacher: torch.nn.Module, n: int = 256, size: int = 64, split: str = "heldout",
                 kinds: Optional[Sequence[str]] = None, seed: int = 0,
                 extra_dirs: Optional[Iterable[PathLike]] = None, strength: Tuple[float, float] = (0.15, 0.85),
                 scale: Tuple[float, float] = (0.2, 0.6), include_gray: bool = False, batch_size: int = 32,
                 device: Optional[Union[str, torch.device]] = None, min_gap: float = 0.0, progress: bool = True,
                 cache_dir: Optional[PathLike] = None):
        super().__init__(n, size, split, kinds, seed, extra_dirs, strength, scale, include_gray)
        self.judge_name = getattr(teacher, "name", "") or type(teacher).__name__
        cached = None
        if cache_dir is not None:
            cache_file = Path(cache_dir).expanduser() / f"teacher-labels-{self._labels_key(teacher)}.pt"
            if cache_file.is_file():
                try:
                    cached = torch.load(cache_file, map_location="cpu", weights_only=True)
                except Exception as err:  # a truncated or foreign file: label again and overwrite it
                    warnings.warn(f"ignoring unreadable teacher-label cache {cache_file} ({err}); recomputing")
        ok = isinstance(cached, dict) and all(isinstance(cached.get(k), torch.Tensor) and cached[k].shape == (self.n,)
                                              for k in ("d0", "d1"))
        if ok:
            self.d0, self.d1 = cached["d0"], cached["d1"]
        else:
            self.d0, self.d1 = self._judge(teacher, batch_size, device, progress)
            if cache_dir is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(".tmp")
                torch.save({"d0": self.d0, "d1": self.d1}, tmp)
                os.replace(tmp, cache_file)
        self.labels = (self.d1 < self.d0).long()
        self.ambiguous = (self.d0 - self.d1).abs() < min_gap

    def _labels_key(self, teacher: torch.nn.Module) -> str:
        """Hash of everything the teacher's distances depend on: the items (photos, kinds, seed, sizes)
        and the teacher itself (its class, name and every parameter and buffer, byte for byte)."""
        h = hashlib.sha256()
        h.update(repr((type(teacher).__qualname__, self.judge_name, self.n, self.size, self.split, self.kinds,
                       self.seed, self.strength, self.scale, sorted(s.path or s.name for s in self.sources))).encode())
        for k, v in teacher.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    def _judge(self, teacher, batch_size, device, progress) -> Tuple[torch.Tensor, torch.Tensor]:
        """The teacher's distances d(ref, x0), d(ref, x1) of every item, in batches."""
        from tqdm.auto import tqdm

        d0s, d1s = [], []
        dev = torch.device(device) if device is not None else next(
            (p.device for p in teacher.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for start in tqdm(range(0, self.n, batch_size), desc=f"teacher {self.judge_name}", disable=not progress or None):
                idx = range(start, min(self.n, start + batch_size))
                ref, x0, x1 = (torch.stack(t).to(dev) for t in zip(*(self.images(i) for i in idx)))
                k = len(idx)
                if getattr(teacher, "has_embedding", False):  # embed each image once (not the reference twice)
                    from ..metrics.embedding import cosine_distance_from_unit

                    e = teacher.embed(torch.cat([ref, x0, x1])).double()
                    d = torch.cat([cosine_distance_from_unit(e[:k], e[k:2 * k]),
                                   cosine_distance_from_unit(e[:k], e[2 * k:])]).float().cpu()
                else:
                    d = teacher(torch.cat([ref, ref]), torch.cat([x0, x1])).float().cpu()
                d0s.append(d[:k])
                d1s.append(d[k:])
        return torch.cat(d0s), torch.cat(d1s)

    def __getitem__(self, i: int):
        ref, x0, x1 = self.images(i)
        lab = int(self.labels[i])
        return ref, x0, x1, lab, float(lab)

    def group(self, i: int) -> str:
        return "teacher"

    def info(self, i: int) -> Dict[str, object]:
        _, src, k0, k1, s0, s1, _, _ = self._params(i)
        return {"photo": src.name, "kind0": k0, "kind1": k1, "s0": s0, "s1": s1,
                "d0": float(self.d0[i]), "d1": float(self.d1[i]), "label": int(self.labels[i]), "judge": self.judge_name}


def ordering_suite(n: int = 256, size: int = 64, split: str = "heldout", seed: int = 0, **kw) -> OrderingSuite:
    """Shortcut for :class:`OrderingSuite`."""
    return OrderingSuite(n=n, size=size, split=split, seed=seed, **kw)


def teacher_suite(teacher, n: int = 256, size: int = 64, split: str = "heldout", seed: int = 0, **kw) -> TeacherSuite:
    """Shortcut for :class:`TeacherSuite`."""
    return TeacherSuite(teacher, n=n, size=size, split=split, seed=seed, **kw)


# --------------------------------------------------------------------------- crops for distillation


def color_jitter(img: torch.Tensor, rng: np.random.Generator, brightness: float = 0.4, contrast_: float = 0.4,
                 saturation_: float = 0.2, hue: float = 0.1, p: float = 0.8, gray_p: float = 0.2) -> torch.Tensor:
    """ColorJitter(b, c, s, h) with probability p (random order), then grayscale with probability gray_p.

    Hue is a rotation of the chroma plane in YIQ space (a linear stand-in for HSV hue shifts).
    """
    x = img
    if rng.uniform() < p:
        for op in rng.permutation(4):
            if op == 0 and brightness:
                x = x * rng.uniform(1 - brightness, 1 + brightness)
            elif op == 1 and contrast_:
                m = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
                x = (x - m) * rng.uniform(1 - contrast_, 1 + contrast_) + m
            elif op == 2 and saturation_:
                luma = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
                x = luma + (x - luma) * rng.uniform(1 - saturation_, 1 + saturation_)
            elif op == 3 and hue:
                x = _hue_rotate(x, rng.uniform(-hue, hue) * 2 * math.pi)
            x = x.clamp(0, 1)
    if rng.uniform() < gray_p:
        luma = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = luma.expand(3, -1, -1)
    return x.clamp(0, 1).contiguous()


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    m = torch.linalg.inv(_YIQ) @ rot @ _YIQ
    return torch.einsum("ij,jhw->ihw", m, x)


class RandomCrops(Dataset):
    """Random square crops of training photos for distillation: several scales, flips, colour jitter.

    Item i is ``crop`` (3×size×size), or ``(plain, jittered)`` when ``jitter_view=True`` -- the two
    views LipSim's distillation matches to the teacher. Deterministic in (seed, i); use a different
    seed per epoch for fresh crops. Defaults to the *train* split: held-out photos never appear.
    """

    def __init__(self, n: int = 10000, size: int = 224, split: str = "train",
                 scales: Sequence[float] = (0.25, 0.5, 0.75, 1.0), flip: bool = True, jitter_view: bool = False,
                 seed: int = 0, extra_dirs: Optional[Iterable[PathLike]] = None, include_gray: bool = True,
                 sources: Optional[Sequence[PhotoSource]] = None):
        if int(n) <= 0:
            raise InputError(f"number of crops must be positive, got {n}")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise InputError(f"crop scales must lie in (0, 1], got {list(scales)}")
        self.sources = list(sources) if sources is not None else select_photos(split, extra_dirs, include_gray)
        if not self.sources:
            raise InputError("no photos to crop from")
        self.n, self.size, self.scales, self.flip = int(n), int(size), tuple(float(s) for s in scales), flip
        self.jitter_view, self.seed = jitter_view, int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = _item_rng(self.seed, i, "crops")
        src = self.sources[int(rng.integers(len(self.sources)))]
        s = self.scales[int(rng.integers(len(self.scales)))]
        jitter = 0.9 + 0.1 * rng.uniform()  # +-10 % around the nominal scale
        x = random_crop(src.load(), rng, self.size, (s * jitter, s * jitter))
        if self.flip and rng.uniform() < 0.5:
            x = x.flip(-1)
        if not self.jitter_view:
            return x
        return x, color_jitter(x, rng)

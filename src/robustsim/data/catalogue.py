"""The photo catalogue: real photos available offline, their train/held-out split, and crops of them.

Why a module of its own: every offline suite (ordering, teacher, judged) and every training recipe
draws from the same photos, and the split between them is what keeps evaluation honest. Keeping the
catalogue apart from the distortions and the suites makes that one rule live in one place.

Photos (``BUILTIN``): scikit-image's bundled natural photographs and scikit-learn's two sample
images, each with its licence. Split: the photos named in :data:`HELDOUT` (and, for extra folders,
every photo whose name hashes into the held-out bucket, see :func:`split_of`) are **held out: no
training recipe may use them**; evaluation suites default to them. Extra folders come from
``extra_dirs`` arguments and ``$ROBUSTSIM_PHOTOS`` (e.g. the Debian photos that
``scripts/fetch_photos.sh`` puts in ``work_data/photos``).

Crops: :func:`random_crop`, :func:`textured_crop` (redraws flat crops), :func:`crop_resize`, and
:func:`item_rng` -- an RNG that is a pure function of (seed, index, salt), which is what makes every
suite item independent of order, workers and process.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

PathLike = Union[str, os.PathLike]



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
    from ..images import list_images

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
    from ..images import read_image

    return read_image(src.path)


# --------------------------------------------------------------------------- crops


def item_rng(seed: int, index: int, salt: str) -> np.random.Generator:
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

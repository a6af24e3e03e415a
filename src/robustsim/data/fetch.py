"""Download and extract BAPPS and NIGHTS into the layouts :mod:`.bapps` and :mod:`.night` read.

Downloads reuse :func:`robustsim.download.download` (resumable ``.part`` files, progress bar, checksum
when one is known, refused in offline mode). Archives are extracted with path-traversal checks, a
``.robustsim-complete`` marker records a finished extraction so a rerun does nothing, and the layout
is validated at the end. No checksums are published for these archives, so none is enforced
(``sha256`` stays None); the layout check catches truncated extractions.

URLs are the official ones: the PerceptualSimilarity repository's ``scripts/download_dataset.sh``
(S3 bucket, with the old Berkeley mirror as fallback) and DreamSim's ``dataset/download_dataset.sh``.
"""
from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from ..errors import InputError, WeightsError

PathLike = Union[str, os.PathLike]
_S3 = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/"
_BERKELEY = "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/"
MARKER = ".robustsim-complete"


@dataclass(frozen=True)
class Archive:
    """One dataset archive: where to get it, where to extract it (relative to the root), how to check it."""

    filename: str
    urls: Tuple[str, ...]
    extract_to: str  # folder (relative to root) the archive is extracted into
    check: str  # name of the layout check in CHECKS
    sha256: Optional[str] = None
    size_hint: str = ""


ARCHIVES: Dict[str, Archive] = {
    "bapps-2afc-train": Archive("twoafc_train.tar.gz", (_S3 + "twoafc_train.tar.gz", _BERKELEY + "twoafc_train.tar.gz"),
                                "2afc", "bapps-2afc-train", size_hint="about 5 GB"),
    "bapps-2afc-val": Archive("twoafc_val.tar.gz", (_S3 + "twoafc_val.tar.gz", _BERKELEY + "twoafc_val.tar.gz"),
                              "2afc", "bapps-2afc-val", size_hint="about 1 GB"),
    "bapps-jnd": Archive("jnd.tar.gz", (_S3 + "jnd.tar.gz", _BERKELEY + "jnd.tar.gz"), ".", "bapps-jnd",
                         size_hint="about 0.4 GB"),
    "nights": Archive("nights.zip", ("https://data.csail.mit.edu/nights/nights.zip",), ".", "nights",
                      size_hint="about 20 GB"),
}


def _check_bapps_train(root: Path) -> None:
    from .bapps import BAPPS2AFC

    BAPPS2AFC(root, "train")


def _check_bapps_val(root: Path) -> None:
    from .bapps import BAPPS2AFC

    BAPPS2AFC(root, "val")


def _check_jnd(root: Path) -> None:
    from .bapps import BAPPSJND

    BAPPSJND(root)


def _check_nights(root: Path) -> None:
    from .night import Nights

    for split in ("train", "val", "test"):
        Nights(root, split)


CHECKS: Dict[str, Callable[[Path], None]] = {
    "bapps-2afc-train": _check_bapps_train,
    "bapps-2afc-val": _check_bapps_val,
    "bapps-jnd": _check_jnd,
    "nights": _check_nights,
}


def check_layout(name: str, root: PathLike) -> None:
    """Raise InputError saying exactly what is missing when ``root`` does not hold dataset ``name``."""
    if name not in ARCHIVES:
        raise InputError(f"unknown dataset {name!r}; choose from {', '.join(ARCHIVES)}")
    CHECKS[ARCHIVES[name].check](Path(root).expanduser())


def _safe_members_tar(tf: tarfile.TarFile, dest: Path):
    d = dest.resolve()
    for m in tf.getmembers():
        target = (dest / m.name).resolve()
        if not (target == d or d in target.parents):
            raise InputError(f"refusing to extract {m.name!r}: it would land outside {dest}")
        if m.issym() or m.islnk():
            continue  # datasets are plain files; links are never needed
        yield m


def extract(archive: PathLike, dest: PathLike, progress: bool = True) -> Path:
    """Extract a .tar(.gz) or .zip into ``dest`` (refusing absolute or ``..`` paths); return dest."""
    from tqdm.auto import tqdm

    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                d = dest.resolve()
                for info in tqdm(zf.infolist(), desc=f"extract {archive.name}", disable=not progress or None):
                    target = (dest / info.filename).resolve()
                    if not (target == d or d in target.parents):
                        raise InputError(f"refusing to extract {info.filename!r}: it would land outside {dest}")
                    zf.extract(info, dest)
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tf:
                members = list(_safe_members_tar(tf, dest))
                for m in tqdm(members, desc=f"extract {archive.name}", disable=not progress or None):
                    tf.extract(m, dest)
        else:
            raise InputError(f"unknown archive type: {archive.name} (expected .zip, .tar or .tar.gz)")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"archive {archive} is damaged ({e}); delete it and download again") from e
    return dest


def fetch_dataset(name: str, root: PathLike, keep_archive: bool = False, progress: bool = True,
                  urls: Optional[Tuple[str, ...]] = None) -> Path:
    """Download (resumably) and extract dataset ``name`` under ``root``; validate its layout.

    A finished dataset (marker present and layout valid) is not downloaded again. ``urls`` overrides
    the official URLs (mirrors, or ``file://`` archives already on disk).
    """
    from ..download import download, is_offline

    if name not in ARCHIVES:
        raise InputError(f"unknown dataset {name!r}; choose from {', '.join(ARCHIVES)}")
    spec = ARCHIVES[name]
    root = Path(root).expanduser()
    marker = root / f"{MARKER}-{name}"
    if marker.is_file():
        check_layout(name, root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    archive = root / spec.filename
    if not archive.is_file():
        errors = []
        for url in urls or spec.urls:
            try:
                download(url, archive, spec.sha256, progress=progress)
                break
            except WeightsError as e:
                if is_offline():
                    raise InputError(f"{name} ({spec.size_hint}) is not under {root} and offline mode is on; "
                                     f"download {spec.urls[0]} and extract it there") from e
                errors.append(str(e))
        else:
            raise InputError(f"could not download {name}: " + "; ".join(errors))
    extract(archive, root / spec.extract_to, progress=progress)
    check_layout(name, root)
    marker.write_text("ok\n")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return root


def remove_partial(name: str, root: PathLike) -> None:
    """Delete a half-downloaded archive (the .part file) of ``name`` so the next fetch starts over."""
    spec = ARCHIVES[name]
    p = Path(root) / (spec.filename + ".part")
    if p.exists():
        p.unlink()


__all__ = ["ARCHIVES", "Archive", "fetch_dataset", "check_layout", "extract", "remove_partial"]

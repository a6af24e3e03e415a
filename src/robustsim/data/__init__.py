"""Datasets: real-photo suites (offline), BAPPS, NIGHTS; their registry (:mod:`.registry`).

Every 2AFC dataset yields ``(ref, x0, x1, label, judge)`` with images 3×H×W in [0, 1], ``label`` 0 when
x0 is the closer one and ``judge`` the fraction of judges preferring x1. Submodules are imported on
first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "photos": "photos", "catalogue": "catalogue", "distortions": "distortions", "suites": "suites", "judged": "judged",
    "bapps": "bapps", "night": "night", "fetch": "fetch", "registry": "registry", "augment": "augment",
}
_NAMES = {
    "PhotoSource": "photos", "photo_sources": "photos", "train_photos": "photos", "heldout_photos": "photos",
    "select_photos": "photos", "HELDOUT": "photos", "DISTORTIONS": "photos", "distort": "photos",
    "OrderingSuite": "photos", "TeacherSuite": "photos", "ordering_suite": "photos", "teacher_suite": "photos",
    "RandomCrops": "photos", "TripletDataset": "photos", "color_jitter": "augment",
    "KINDS": "distortions", "ORDERING_KINDS": "distortions",
    "JudgedPool": "judged", "JudgedSuite": "judged", "JudgedPairs": "judged", "judged_suite": "judged",
    "judged_triplets": "judged", "DEFAULT_JUDGES": "judged",
    "BAPPS2AFC": "bapps", "BAPPSJND": "bapps", "Nights": "night",
    "DatasetSpec": "registry", "build_dataset": "registry", "list_datasets": "registry", "dataset_spec": "registry",
}

__all__ = sorted(set(_LAZY) | set(_NAMES))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{_LAZY[name]}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""robustsim: perceptual image similarity that stays trustworthy under attack.

    >>> import robustsim
    >>> metric = robustsim.load()              # the shipped default metric, offline
    >>> d = metric(x, y)                       # N distances, x and y N×3×H×W in [0, 1]

Submodules (``certify``, ``attacks``, ``evaluate``, ``train``, ``data``, ``retrieval``) are imported on
first use, so ``import robustsim`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import InputError, OfflineError, RobustsimError, WeightsError
from .hub import list_models, load, register, save
from .metrics.base import Metric

__version__ = "0.1.0"

_LAZY = {"certify", "attacks", "evaluate", "train", "data", "retrieval", "images", "hub", "lipschitz", "preprocess"}

__all__ = [
    "load", "list_models", "save", "register", "Metric",
    "RobustsimError", "InputError", "WeightsError", "OfflineError", *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY or name == "io":  # io: the former name of images (robustsim/io.py)
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'robustsim' has no attribute {name!r}")

"""Let torchvision import next to a torch build it was not compiled against.

The torchvision wheels on PyPI are CUDA builds; with a CPU-only torch their C++ ops fail to load
and ``import torchvision`` dies with "operator torchvision::nms does not exist", because its import
registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``. lpips, timm and open_clip
import torchvision (for models and transforms, never for those ops), so before importing them we
declare the two schemas. torchvision's compiled ops stay unavailable (it says so if they are
called). Where torchvision imports normally this does nothing.
"""
from __future__ import annotations

import importlib.util
import sys

_LIBS: list = []  # keeps the schema library alive for the life of the process


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` work; returns True if the schemas had to be declared."""
    if "torchvision" in sys.modules or _LIBS or importlib.util.find_spec("torchvision") is None:
        return False
    import torch

    try:
        import torchvision  # noqa: F401

        return False
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)
    import torchvision  # noqa: F401,F811

    return True

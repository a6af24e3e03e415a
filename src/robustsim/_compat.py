"""Let torchvision import next to a torch build it was not compiled against.

The torchvision wheels on PyPI are CUDA builds; with a CPU-only torch their C++ ops fail to load
and ``import torchvision`` dies with "operator torchvision::nms does not exist", because its import
registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``. lpips, timm and open_clip
import torchvision (for models and transforms, never for those ops), so before torchvision is
imported we declare the two schemas. torchvision's compiled ops stay unavailable (it says so if they
are called). Where torchvision imports normally this does nothing.

Two ways in:

* :func:`ensure_torchvision_importable` imports torchvision now (robustsim's own code calls it before
  importing timm / open_clip / lpips);
* :func:`install_import_hook` (run by ``import robustsim``) puts a one-shot finder in front of
  ``sys.meta_path``: the first time *anyone* imports torchvision -- a user's own ``import lpips`` or
  ``import torchvision`` after ``import robustsim`` -- it declares the schemas if, and only if, the
  torchvision about to be imported cannot load its C++ ops. It costs nothing until then and never
  imports torchvision itself.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import Optional

_LIBS: list = []  # keeps the schema library alive for the life of the process
_OPS = ("nms", "qnms")


def _declare_schemas() -> None:
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    for op in _OPS:
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


def _ops_defined() -> bool:
    """True if ``torchvision::nms`` already exists (torchvision's library or our schemas loaded)."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the test
        return True
    except (AttributeError, RuntimeError):
        return False


def _needs_schemas(spec: Optional[importlib.machinery.ModuleSpec]) -> bool:
    """Will importing the torchvision at ``spec`` die on the missing ``nms`` schema?

    Only a real torchvision (one that ships ``_meta_registrations.py``, which registers the fake
    kernels unconditionally) whose compiled ``_C`` library is absent or does not load is affected.
    Loading ``_C`` here is what torchvision's own import does next; a second load is a no-op.
    """
    if _LIBS or spec is None or not spec.submodule_search_locations:
        return False
    folder = next(iter(spec.submodule_search_locations))
    if not os.path.isfile(os.path.join(folder, "_meta_registrations.py")) or _ops_defined():
        return False
    libs = [f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith((".so", ".pyd", ".dylib"))]
    if not libs:
        return True
    import torch

    try:
        torch.ops.load_library(os.path.join(folder, libs[0]))
    except (OSError, RuntimeError):
        return True
    return not _ops_defined()


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    """One-shot finder: on the first import of torchvision, declare the schemas if they are needed.

    It never supplies a module (returns None), so the normal finders import torchvision as usual.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        remove_import_hook()
        try:
            spec = importlib.machinery.PathFinder.find_spec("torchvision", path)
            if _needs_schemas(spec):
                _declare_schemas()
        except Exception:  # never break an import from inside the import system; torchvision reports its own error
            pass
        return None


def install_import_hook() -> bool:
    """Arrange for a later ``import torchvision`` (by anyone) to work; True if the hook was installed."""
    if "torchvision" in sys.modules or _LIBS or any(isinstance(f, _TorchvisionImportHook) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _TorchvisionImportHook())
    return True


def remove_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionImportHook)]


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` work; returns True if the schemas had to be declared."""
    remove_import_hook()
    if "torchvision" in sys.modules or _LIBS or importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401

        return False
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _declare_schemas()
    import torchvision  # noqa: F401,F811

    return True

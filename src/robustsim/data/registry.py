"""Registry of datasets: ``name -> DatasetSpec(factory, needs_root, defaults)``, modelled on :mod:`robustsim.hub`.

One naming scheme for ``robustsim eval --dataset``, the training configs' ``data.kind`` and
``robustsim data fetch`` (whose archive names are ``<dataset>`` or ``<dataset>-<split>``). The factory
is a ``"module:function"`` reference, imported only when the dataset is built, and called with
keyword arguments: ``root`` (datasets that need one), ``split``, ``size``, ``n``, ``seed`` and any
dataset options; a standard argument the factory does not take is not passed. Adding a dataset is
one new module with a factory plus one :func:`register` line below (see CONTRIBUTING.md).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import InputError

#: what an evaluation does with a dataset: "2afc" triplets, "jnd" pairs, or the judge-consensus suites
PROTOCOLS = ("2afc", "jnd", "judged", "judged-pairs")
STANDARD_ARGS = ("root", "split", "size", "n", "seed")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    factory: str  # "module:function", called as described in the module docstring
    description: str
    needs_root: bool = False
    defaults: Dict[str, Any] = field(default_factory=dict)  # e.g. {"split": "val", "size": 64}
    protocol: str = "2afc"
    trainable: bool = True  # usable as a recipe's data.kind (items carry a judgment)
    size_from_metric: bool = False  # evaluation default size: the metric's input size (else defaults["size"])
    archives: Dict[str, str] = field(default_factory=dict)  # split -> `robustsim data fetch` name
    aliases: Tuple[str, ...] = ()  # older names still accepted (training configs)


_DATASETS: Dict[str, DatasetSpec] = {}
_ALIASES: Dict[str, str] = {}


def register(spec: DatasetSpec, overwrite: bool = False) -> None:
    if spec.protocol not in PROTOCOLS:
        raise ValueError(f"dataset {spec.name!r}: protocol must be one of {PROTOCOLS}")
    if spec.name in _DATASETS and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _DATASETS[spec.name] = spec
    for a in spec.aliases:
        _ALIASES[a] = spec.name


def list_datasets(protocol: Optional[str] = None, trainable: Optional[bool] = None) -> List[str]:
    """Registered names (in registration order), optionally only one protocol or only trainable ones."""
    return [n for n, s in _DATASETS.items()
            if (protocol is None or s.protocol == protocol) and (trainable is None or s.trainable == trainable)]


def dataset_spec(name: str) -> DatasetSpec:
    key = _ALIASES.get(str(name), str(name))
    if key not in _DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose from {', '.join(_DATASETS)}")
    return _DATASETS[key]


def archive_names() -> List[str]:
    """Every name ``robustsim data fetch`` accepts."""
    return [a for s in _DATASETS.values() for a in s.archives.values()]


def _factory(spec: DatasetSpec) -> Callable[..., Any]:
    module, _, fn = spec.factory.partition(":")
    return getattr(importlib.import_module(module), fn)


def build_dataset(name: str, root: Optional[str] = None, **kwargs: Any):
    """The dataset ``name`` with the spec's defaults overridden by the non-None ``kwargs``."""
    spec = dataset_spec(name)
    if spec.needs_root and not root:
        fetch = f" (see `robustsim data fetch {', '.join(spec.archives.values())}`)" if spec.archives else ""
        raise InputError(f"dataset {spec.name} needs --root (data.root in a training config): the folder or file "
                         f"holding it{fetch}")
    args = dict(spec.defaults)
    args.update({k: v for k, v in kwargs.items() if v is not None})
    if spec.needs_root:
        args["root"] = root
    fn = _factory(spec)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    dropped = [k for k in STANDARD_ARGS if k in args and k not in params]
    for k in dropped:  # a standard argument this dataset has no use for (e.g. n for BAPPS)
        args.pop(k)
    unknown = [k for k in args if k not in params and not takes_any]
    if unknown:
        raise InputError(f"dataset {spec.name} takes no option(s) {', '.join(unknown)}")
    return fn(**args)


register(DatasetSpec("judged", "robustsim.data.judged:judged_triplets",
                     "real-photo triplets labelled by the consensus of human-calibrated metrics",
                     defaults={"split": "heldout", "size": 64, "n": 1000}, protocol="judged"))
register(DatasetSpec("judged-pairs", "robustsim.data.judged:JudgedPairs",
                     "real-photo pairs scored by the judges (distance correlation)",
                     defaults={"split": "heldout", "size": 64}, protocol="judged-pairs", trainable=False))
register(DatasetSpec("ordering", "robustsim.data.suites:ordering_suite",
                     "real-photo triplets: one distortion at two strengths (offline)",
                     defaults={"split": "heldout", "size": 64}, size_from_metric=True, aliases=("photos-ordering",)))
register(DatasetSpec("teacher", "robustsim.data.suites:teacher_suite",
                     "real-photo triplets labelled by a teacher metric (offline)",
                     defaults={"split": "heldout", "size": 64}, size_from_metric=True, aliases=("photos-teacher",)))
register(DatasetSpec("bapps-2afc", "robustsim.data.bapps:bapps_2afc", "BAPPS 2AFC (Zhang et al. 2018)",
                     needs_root=True, defaults={"split": "val", "size": 64}, aliases=("bapps",),
                     archives={"train": "bapps-2afc-train", "val": "bapps-2afc-val"}))
register(DatasetSpec("bapps-jnd", "robustsim.data.bapps:bapps_jnd", "BAPPS JND pairs", needs_root=True,
                     defaults={"split": "val", "size": 64}, protocol="jnd", trainable=False,
                     archives={"val": "bapps-jnd"}))
register(DatasetSpec("nights", "robustsim.data.night:nights", "NIGHTS 2AFC (Fu et al. 2023)", needs_root=True,
                     defaults={"split": "test", "size": 224}, archives={"all": "nights"}))
register(DatasetSpec("tensors", "robustsim.train.data:tensor_triplets",
                     "triplets stored as tensors in one .pt/.safetensors file (root = the file)", needs_root=True))

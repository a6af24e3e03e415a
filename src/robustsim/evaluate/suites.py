"""Registry of evaluation suites (``robustsim eval --suite NAME``): ``name -> SuiteSpec(runner, description)``.

A suite runs a fixed plan over several metrics and writes a report into ``out``. The runner is a
``"module:function"`` reference, imported only when the suite runs, called as
``runner(out, progress=..., device=..., extra_dirs=[...])`` and returning a dict with ``paths["md"]``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..errors import InputError


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    runner: str  # "module:function"
    description: str


_SUITES: Dict[str, SuiteSpec] = {}


def register(spec: SuiteSpec, overwrite: bool = False) -> None:
    if spec.name in _SUITES and not overwrite:
        raise ValueError(f"suite {spec.name!r} is already registered")
    _SUITES[spec.name] = spec


def list_suites() -> List[str]:
    return list(_SUITES)


def suite_spec(name: str) -> SuiteSpec:
    if name not in _SUITES:
        raise InputError(f"unknown suite {name!r}; choose from {', '.join(_SUITES)}")
    return _SUITES[name]


def run_suite(name: str, out: str, progress: bool = True, device: Optional[str] = None,
              extra_dirs: Sequence[str] = ()) -> Dict[str, Any]:
    module, _, fn = suite_spec(name).runner.partition(":")
    return getattr(importlib.import_module(module), fn)(out, progress=progress, device=device, extra_dirs=list(extra_dirs))


def judged(out: str, progress: bool = True, device: Optional[str] = None, extra_dirs: Sequence[str] = ()) -> Dict[str, Any]:
    """Every offline metric on the judged suite (the RESULTS.md headline)."""
    from .results import ResultsPlan, run_judged_results

    command = "robustsim eval --suite judged" + "".join(f" --extra-dir {d}" for d in extra_dirs)
    return run_judged_results(out, plan=ResultsPlan(extra_dirs=list(extra_dirs)), progress=progress, device=device,
                              command=command)


def offline(out: str, progress: bool = True, device: Optional[str] = None, extra_dirs: Sequence[str] = ()) -> Dict[str, Any]:
    """The older ordering-suite report."""
    from .offline import run_offline_suite

    return run_offline_suite(out, run_dir="work_data/results_run", progress=progress, device=device, stem="ORDERING")


register(SuiteSpec("judged", "robustsim.evaluate.suites:judged",
                   "every offline metric on the judged suite -> docs/RESULTS.md"))
register(SuiteSpec("offline", "robustsim.evaluate.suites:offline", "the ordering-suite report"))

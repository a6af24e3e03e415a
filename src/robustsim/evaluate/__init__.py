"""Evaluation protocols: 2AFC (natural / attacked / certified), JND, embedding attack, retrieval, reports.

    >>> from robustsim import evaluate
    >>> res = evaluate.evaluate_2afc(metric, dataset, attack=evaluate.AttackSpec(eps=[0.5, 1]), certified=True)

Every long loop is resumable through ``run_dir`` (one file per batch). Submodules load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "evaluate_2afc": "twoafc", "twoafc_scores": "twoafc", "AttackSpec": "twoafc", "triplet_distances": "twoafc",
    "PAPER_CERT_EPS": "twoafc", "jnd_map": "jnd", "evaluate_jnd": "jnd",
    "certified_accuracy": "certified", "certified_curve": "certified",
    "evaluate_embedding_attack": "embedding", "evaluate_retrieval": "retrieval",
    "write_report": "report", "markdown": "report", "run_offline_suite": "offline", "RESULTS_METRICS": "offline",
    "BatchStore": "runner", "evaluate_judged": "judged", "evaluate_pairs": "judged", "spearman": "judged",
    "run_judged_results": "results", "ResultsPlan": "results",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    if name in {"twoafc", "jnd", "certified", "embedding", "retrieval", "report", "offline", "runner", "suites",
                "judged", "results"}:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

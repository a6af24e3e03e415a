"""What every sub-command shares, defined once: the ``--metric`` / ``--device`` / ``--json`` options,
metric loading, file checks and output (JSON, atomic ``--out`` files).

This module loads before torch: the helpers import the library when they run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

METRIC_HELP = "metric name from `robustsim models`, or a saved .safetensors file (default: the shipped default)"


def add_metric_option(p: argparse.ArgumentParser, help: str = METRIC_HELP, weights: bool = False) -> None:
    p.add_argument("--metric", "-m", default=None, help=help)
    if weights:
        p.add_argument("--weights", default=None, help="weights file for the metric name")


def add_device_option(p: argparse.ArgumentParser, default: Optional[str] = "cpu") -> None:
    p.add_argument("--device", default=default, help="torch device, e.g. cpu, cuda, cuda:1")


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_metric_options(p: argparse.ArgumentParser, json_output: bool = True, weights: bool = False,
                       device: Optional[str] = "cpu") -> None:
    """``--metric``, ``--device`` and (unless ``json_output`` is False) ``--json``."""
    add_metric_option(p, weights=weights)
    if json_output:
        add_json_option(p)
    add_device_option(p, device)


def metric_name(ref: Optional[str]) -> str:
    """A --metric value as hub.load wants it (see :func:`robustsim.hub.canonical_ref`)."""
    from ..hub import canonical_ref

    return canonical_ref(ref)


def device_from_arg(name: Optional[str]):
    from ..hub import resolve_device

    return resolve_device(name)


def load_metric(ref: Optional[str], device: Optional[str] = "cpu", weights: Optional[str] = None):
    """The metric a command line names, on the named device (unknown names fail before anything loads)."""
    from .. import hub

    ref = metric_name(ref)
    dev = device_from_arg(device)
    return hub.load(ref, weights=weights, device=dev) if weights else hub.load(ref, device=dev)


def load_metric_arg(args: argparse.Namespace):
    """:func:`load_metric` from the parsed ``--metric``, ``--device`` (and ``--weights``) options."""
    return load_metric(args.metric, getattr(args, "device", "cpu"), getattr(args, "weights", None))


def require_files(*paths: str) -> None:
    """Fail fast (before loading a model) on paths that are not files."""
    from ..errors import InputError

    for p in paths:
        q = Path(p).expanduser()
        if not q.exists():
            raise InputError(f"{q}: no such file")
        if q.is_dir():
            raise InputError(f"{q}: is a directory, not an image file")


def check_out_dir(path: str, option: str = "--out") -> Path:
    """The output file ``path``; its folder must exist."""
    from ..errors import InputError

    out = Path(path).expanduser()
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such directory for {option}")
    return out


def write_output(path: str, text: str) -> None:
    """Write a command's output file atomically (never half-written)."""
    from ..atomic import write_atomic

    write_atomic(check_out_dir(path), text)


def print_json(obj: Any, indent: Optional[int] = 2) -> None:
    print(json.dumps(obj, indent=indent))


def emit(args: argparse.Namespace, report: Any, lines) -> int:
    """``--json``: the report as JSON; otherwise the human-readable lines. Returns exit code 0."""
    if getattr(args, "json", False):
        print_json(report)
    else:
        print("\n".join(lines))
    return 0


def note(message: str) -> None:
    """A one-line status message on stderr, prefixed like every robustsim message."""
    print(f"robustsim: {message}", file=sys.stderr)

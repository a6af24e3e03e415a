"""Core sub-commands: ``models``, ``distance``, ``compare``."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered metrics and whether their weights are present locally")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from . import hub

    rows = []
    for name in hub.list_models():
        spec = hub.model_spec(name)
        rows.append({"name": name, "certified": spec.certified, "weights_present": hub.weights_present(name),
                     "default": name == hub.DEFAULT_MODEL, "description": spec.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'name':<{width}}  certified  weights  description")
    for r in rows:
        mark = "*" if r["default"] else " "
        print(f"{r['name']:<{width}}{mark} {'yes' if r['certified'] else 'no':<9}  {'local' if r['weights_present'] else '-':<7}  {r['description']}")
    return 0

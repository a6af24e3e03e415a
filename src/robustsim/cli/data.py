"""``robustsim data fetch|check|photos``: get the benchmark datasets, validate a layout, list offline photos."""
from __future__ import annotations

import argparse

from ..data.registry import archive_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="download / validate BAPPS and NIGHTS; list the offline photos")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    f = dsub.add_parser("fetch", help="download (resumable) and extract a dataset, then validate it")
    f.add_argument("name", choices=archive_names(), help="dataset archive")
    f.add_argument("--root", required=True, help="folder to put the dataset in")
    f.add_argument("--keep-archive", action="store_true")
    f.set_defaults(func=cmd_fetch)
    c = dsub.add_parser("check", help="validate a dataset layout; says exactly what is missing")
    c.add_argument("name", choices=archive_names(), help="dataset archive")
    c.add_argument("--root", required=True)
    c.set_defaults(func=cmd_check)
    ph = dsub.add_parser("photos", help="list the real photos available offline, their split and licence")
    ph.add_argument("--extra-dir", action="append", default=[], help="additional photo folder (repeatable)")
    ph.set_defaults(func=cmd_photos)


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..data.fetch import fetch_dataset

    root = fetch_dataset(args.name, args.root, keep_archive=args.keep_archive)
    print(f"{args.name}: ready under {root}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..data.fetch import check_layout

    check_layout(args.name, args.root)
    print(f"{args.name}: layout OK under {args.root}")
    return 0


def cmd_photos(args: argparse.Namespace) -> int:
    from ..data.photos import photo_sources

    for s in photo_sources(args.extra_dir):
        print(f"{s.split:<8} {'gray' if s.gray else 'rgb ':<5} {s.origin:<7} {s.name:<28} {s.licence}")
    return 0

"""The ``robustsim`` command line.

Sub-commands live next to the code they drive: each module in :data:`SUBCOMMANDS` has a
``register(subparsers)`` function that adds its parsers with ``set_defaults(func=handler)``; the
handler takes the parsed arguments and returns an exit code. Exit codes: 0 success, 2 bad usage or
bad input (one line on stderr, no traceback), 1 internal error.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

SUBCOMMANDS: List[str] = [
    "robustsim.commands",
    "robustsim.data.cli",
    "robustsim.evaluate.cli",
    "robustsim.lipschitz.cli",
    "robustsim.train.cli",
    "robustsim.retrieval.cli",
    "robustsim.attacks.cli",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is already 2; keep it one line
        self.exit(2, f"robustsim: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustsim", description="Perceptual image similarity that stays trustworthy under attack.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"robustsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import RobustsimError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RobustsimError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"robustsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # an internal error: say what it was, keep the traceback for bug reports
        import traceback

        traceback.print_exc()
        print(f"robustsim: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

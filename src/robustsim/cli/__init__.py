"""The ``robustsim`` command line.

Sub-commands live next to the code they drive: each module in :data:`SUBCOMMANDS` has a
``register(subparsers)`` function that adds its parsers with ``set_defaults(func=handler)``; the
handler takes the parsed arguments and returns an exit code. Exit codes: 0 success, 2 bad usage or
bad input (one line on stderr, no traceback), 1 internal error.

Every sub-command's ``--help`` shows the defaults, and every sub-command takes ``--quiet``: progress
bars appear on a terminal only, never with --quiet or when stderr is piped (see :func:`progress_bars`).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Iterator, List, Optional

SUBCOMMANDS: List[str] = [
    "robustsim.cli.core",
    "robustsim.cli.data",
    "robustsim.cli.eval",
    "robustsim.cli.lipschitz",
    "robustsim.cli.train",
    "robustsim.cli.retrieval",
    "robustsim.cli.attack",
    "robustsim.cli.serve",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is already 2; keep it one line
        self.exit(2, f"robustsim: error: {message}\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Every --help shows each option's default, unless its help text already states one.

    Flags (store_true) and options whose default is None ("not given") show nothing: "(default:
    False)" / "(default: None)" say nothing a user can act on.
    """

    @staticmethod
    def shows_default(action: argparse.Action) -> bool:
        return bool(action.option_strings) and action.nargs != 0 and action.default not in (None, False, argparse.SUPPRESS)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if self.shows_default(action) and "default" not in text.lower():
            text += " (default: %(default)s)" if text else "default: %(default)s"
        return text


QUIET_HELP = "no progress bars (they are also off whenever stderr is not a terminal)"


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield child
                yield from _subparsers(child)


def _finish(parser: argparse.ArgumentParser) -> None:
    """Give every (sub-)command the defaults-showing help and a --quiet option.

    --quiet is accepted before or after the sub-command name; its default is SUPPRESS so a nested
    parser cannot reset a --quiet given to its parent.
    """
    for p in [parser, *_subparsers(parser)]:
        p.formatter_class = _HelpFormatter
        for action in p._actions:  # argparse lists an option without help text bare, default and all
            if action.help is None and _HelpFormatter.shows_default(action):
                action.help = "default: %(default)s"
        if "--quiet" not in p._option_string_actions:
            p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustsim", description="Perceptual image similarity that stays trustworthy under attack.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"robustsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).register(sub)
    _finish(parser)
    return parser


def progress_wanted(quiet: bool = False, stream=None) -> bool:
    """Progress bars only on a terminal: never with --quiet, never when stderr is piped or redirected."""
    stream = sys.stderr if stream is None else stream
    try:
        return not quiet and bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Turn every tqdm bar off while the block runs, whatever ``disable=`` the code passes, if not ``enabled``.

    The commands' library code decides *where* a bar belongs (``progress=True``); whether anyone can
    see it is a property of the command line, decided once here for all sub-commands.
    """
    if enabled:
        yield
        return
    from tqdm import std

    original = std.tqdm.__init__

    def silent_init(self, *args, **kwargs):
        if len(args) > 10:  # disable is tqdm's 11th positional parameter
            args = (*args[:10], True, *args[11:])
        else:
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = silent_init
    try:
        yield
    finally:
        std.tqdm.__init__ = original


def main(argv: Optional[List[str]] = None) -> int:
    from ..errors import RobustsimError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with progress_bars(progress_wanted(getattr(args, "quiet", False))):
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

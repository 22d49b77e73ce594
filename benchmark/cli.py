"""``spinebench`` command line: a thin argparse layer over functions that take resolved arguments.

Bad input (files, labels, keys) ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spinebench import __version__
from spinebench.benchmark.allocator import configure_allocator
from spinebench.datamodules.errors import InputError
from spinebench.leaderboard.errors import LeaderboardInputError

# Before torch is first imported (none of the imports above does): huge pages for large tensors, glibc keeping
# freed activations for reuse (benchmark.allocator says why and what it measured); a user's own values win.
configure_allocator()

# Subcommand modules in ``benchmark.commands``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("centroids", "convert", "phantom", "list", "run", "evaluate", "tune", "predict", "leaderboard")

# Exceptions that mean "the user gave something unusable": reported in one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, LeaderboardInputError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``spinebench X: error: ...``, exit 2), not usage + error; every
    subcommand's parser is of this class too (argparse builds subparsers with the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="spinebench",
        description="Vertebra localization and identification benchmarks for 3D spine CT.",
    )
    parser.add_argument("--version", action="version", version=f"spinebench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"spinebench.benchmark.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"spinebench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable or missing folders, a file where a folder should be, a full disk, ...
        print(f"spinebench {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


def os_error_line(exc: OSError) -> str:
    """``path: reason`` of an operating-system error (both paths of a rename), without a traceback."""
    reason = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


if __name__ == "__main__":
    sys.exit(main())

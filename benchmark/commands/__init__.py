"""One module per CLI subcommand; each exposes ``add_parser(subparsers)`` that sets ``func``.

Numeric options use the argument types below, so a wrong value (``abc``, ``nan``, ``inf``, a negative count) is
refused where it is parsed, in one line naming the option, before anything is read or written.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from spinebench.datamodules.errors import InputError


def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def bounded(kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False):
    """An argparse ``type`` for ``kind`` (int or float) within ``[low, high]`` (``(low, high]`` with ``open_low``),
    finite for floats."""
    def parse(text: str):
        value = _number(kind, text)
        if low is not None and (value <= low if open_low else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if open_low else '>='} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def positive(kind: type):
    """Counts >= 1, sizes and times > 0."""
    return bounded(int, 1) if kind is int else bounded(kind, 0, open_low=True)


def non_negative(kind: type):
    return bounded(kind, 0)


def refuse_overwriting(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is one of the inputs (the same path, or the same file by another name): a command
    never replaces what it reads. Keys name the options in the message."""
    for out_name, out in outputs.items():
        for in_name, src in inputs.items():
            if out is not None and src is not None and _same_path(Path(out), Path(src)):
                raise InputError(f"{out_name} {out}: is the input {in_name} {src}; write the output elsewhere")


def _same_path(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()

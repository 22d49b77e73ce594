"""One module per CLI subcommand; each exposes ``add_parser(subparsers)`` that sets ``func``.

Numeric options use the argument types below, so a wrong value (``abc``, ``nan``, ``inf``, a negative count) is
refused where it is parsed, in one line naming the option, before anything is read or written.
"""

from __future__ import annotations

import argparse
import math


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

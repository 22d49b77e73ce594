"""The per-vertebra evaluation records: column schema, CSV reading and validation (no torch).

One row per (run, method, seed, case, vertebra of the label set). ``benchmark.records`` builds and writes the
rows; this module defines the columns and reads them back, so the leaderboard needs nothing but the file.
See ``benchmark/records.py`` for the meaning of each column.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from spinebench.datamodules.labels import REGION_OF
from spinebench.leaderboard.errors import LeaderboardInputError

RECORDS_FILENAME = "records.csv"
COORD_COLUMNS = ("true_x_mm", "true_y_mm", "true_z_mm", "pred_x_mm", "pred_y_mm", "pred_z_mm")
# Required columns, in file order, and their kinds: str, int, float (empty = NaN) or flag (0/1).
REQUIRED_COLUMNS: dict[str, str] = {
    "run": "str",
    "method": "str",
    "seed": "int",
    "case": "str",
    "patient": "str",
    "vertebra": "str",
    "region": "str",
    "annotated": "flag",
    **{c: "float" for c in COORD_COLUMNS},
    "distance_mm": "float",
    "identified": "flag",
    "score": "float",
    "pred_present": "flag",
    "dataset": "str",
    "split": "str",
}
# Optional columns: written when known, left empty or absent otherwise.
OPTIONAL_COLUMNS: dict[str, str] = {
    "method_order": "int",  # position of the method in its ablation; table rows follow it
    "seconds_per_case": "float",
    "params": "float",
    "train_peak_memory_mb": "float",
    "peak_memory_mb": "float",
}
META_PREFIX = "meta_"  # case metadata, e.g. meta_metal, meta_curvature, meta_limited_fov (stored as text)
DISTANCE_TOLERANCE_MM = 1e-3


def format_value(value: object, kind: str) -> str:
    """The CSV text of one value: shortest round-trip floats, empty for NaN/None, 0/1 flags."""
    if value is None:
        return ""
    if kind == "float":
        v = float(value)
        return "" if math.isnan(v) else repr(v)
    if kind in ("int", "flag"):
        return str(int(value))
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def column_kind(name: str) -> str:
    return REQUIRED_COLUMNS.get(name) or OPTIONAL_COLUMNS.get(name) or "str"


def ordered_columns(names: set[str] | list[str]) -> list[str]:
    """Required columns, then the optional ones present, then ``meta_*`` columns sorted by name."""
    names = set(names)
    unknown = sorted(n for n in names if n not in REQUIRED_COLUMNS and n not in OPTIONAL_COLUMNS)
    bad = [n for n in unknown if not n.startswith(META_PREFIX)]
    if bad:
        raise LeaderboardInputError(
            f"unknown records column {bad[0]!r}; metadata columns must start with {META_PREFIX!r}"
        )
    return list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in names] + unknown


class Records:
    """Columns of a records table as numpy arrays: ``str`` columns as object arrays, numbers as float/int/bool."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns
        self.n_rows = len(next(iter(columns.values()))) if columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return self.n_rows

    @property
    def meta_columns(self) -> list[str]:
        return sorted(c for c in self.columns if c.startswith(META_PREFIX))

    def select(self, mask: np.ndarray) -> Records:
        return Records({k: v[mask] for k, v in self.columns.items()})

    def has_values(self, name: str) -> bool:
        """The column exists and holds at least one non-empty value."""
        if name not in self.columns:
            return False
        col = self.columns[name]
        if col.dtype == object:
            return bool(np.any(col != ""))
        return bool(np.any(np.isfinite(col.astype(float))))

    @staticmethod
    def concatenate(parts: list[Records]) -> Records:
        names = sorted(set().union(*(p.columns for p in parts))) if parts else []
        out = {}
        for name in names:
            kind = column_kind(name)
            arrays = []
            for p in parts:
                if name in p.columns:
                    arrays.append(p.columns[name])
                else:  # a column one file lacks: empty values
                    fill = "" if kind == "str" else (-1 if kind == "int" else np.nan)
                    arrays.append(np.full(len(p), fill, dtype=object if kind == "str" else None))
            out[name] = np.concatenate(arrays)
        return Records(out)


def _parse(text: str, kind: str, where: str, column: str) -> object:
    if kind == "str":
        return text
    try:
        if kind == "float":
            return float(text) if text != "" else math.nan
        if kind == "int":
            return int(text) if text != "" else -1
        if text not in ("0", "1"):
            raise ValueError
        return text == "1"
    except ValueError:
        expected = {"float": "a number or empty", "int": "an integer", "flag": "0 or 1"}[kind]
        raise LeaderboardInputError(f"{where}: column {column!r}: expected {expected}, got {text!r}") from None


def read_records(path: str | os.PathLike) -> Records:
    """Read and validate one records CSV; errors name the file, the row and the column."""
    path = Path(path)
    if not path.is_file():
        raise LeaderboardInputError(f"{path}: records file not found")
    try:
        return _read_records(path)
    except (UnicodeDecodeError, csv.Error) as exc:  # a binary or mangled file: not a records CSV
        raise LeaderboardInputError(f"{path}: not a records CSV (UTF-8 text with a header): {exc}") from None


def _read_records(path: Path) -> Records:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise LeaderboardInputError(f"{path}: empty records file (no header)")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise LeaderboardInputError(f"{path}: missing column {missing[0]!r}")
        try:
            ordered_columns(header)
        except LeaderboardInputError as exc:
            raise LeaderboardInputError(f"{path}: {exc}") from None
        values: dict[str, list] = {c: [] for c in header}
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise LeaderboardInputError(f"{path}: line {line_no}: {len(row)} fields, header has {len(header)}")
            where = f"{path}: line {line_no}"
            for name, text in zip(header, row):
                values[name].append(_parse(text, column_kind(name), where, name))
    columns = {}
    for name, vals in values.items():
        kind = column_kind(name)
        dtype = {"str": object, "float": float, "int": np.int64, "flag": bool}[kind]
        columns[name] = np.array(vals, dtype=dtype)
    records = Records(columns)
    validate(records, str(path))
    return records


def validate(records: Records, where: str, *, line_numbers: bool = True) -> None:
    """Check the rows agree with themselves: known labels, regions, coordinates vs. flags and distances.

    ``line_numbers``: name the CSV line (row ``i`` is line ``i + 2``); off for tables combined from several files.
    """

    def loc(i: int) -> str:
        return f"{where}: line {i + 2}" if line_numbers else where

    if len(records) == 0:
        raise LeaderboardInputError(f"{where}: no records")
    for name in ("run", "method", "case", "dataset"):
        empty = np.flatnonzero(records[name] == "")
        if empty.size:
            raise LeaderboardInputError(f"{loc(empty[0])}: column {name!r} is empty")
    for i, (v, r) in enumerate(zip(records["vertebra"], records["region"])):
        if v not in REGION_OF:
            raise LeaderboardInputError(f"{loc(i)}: column 'vertebra': unknown vertebra label {v!r}")
        if REGION_OF[v] != r:
            raise LeaderboardInputError(f"{loc(i)}: column 'region': {v} is {REGION_OF[v]}, not {r!r}")
    true = np.stack([records[c] for c in COORD_COLUMNS[:3]], -1)
    pred = np.stack([records[c] for c in COORD_COLUMNS[3:]], -1)
    has_true = np.isfinite(true).all(-1)
    bad = np.flatnonzero(has_true != records["annotated"])
    if bad.size:
        raise LeaderboardInputError(
            f"{loc(bad[0])}: column 'annotated' disagrees with the true_*_mm coordinates"
        )
    bad = np.flatnonzero(records["pred_present"] & ~np.isfinite(pred).all(-1))
    if bad.size:
        raise LeaderboardInputError(f"{loc(bad[0])}: column 'pred_present' is 1 without pred_*_mm")
    matched = has_true & records["pred_present"]
    dist = np.linalg.norm(pred - true, axis=-1)
    bad = np.flatnonzero(matched & ~(np.abs(records["distance_mm"] - dist) <= DISTANCE_TOLERANCE_MM))
    if bad.size:
        raise LeaderboardInputError(f"{loc(bad[0])}: column 'distance_mm' does not match the coordinates")
    keys = list(zip(records["run"], records["method"], records["seed"], records["case"], records["vertebra"]))
    if len(set(keys)) != len(keys):
        seen: set = set()
        for i, k in enumerate(keys):
            if k in seen:
                raise LeaderboardInputError(f"{loc(i)}: duplicate row for (run, method, seed, case, vertebra) {k}")
            seen.add(k)


def resolve_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Records files as given, or ``<folder>/records.csv`` for run folders; sorted and de-duplicated."""
    if not inputs:
        raise LeaderboardInputError("no results given: pass records files or run folders")
    files = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if not (p / RECORDS_FILENAME).is_file():
                raise LeaderboardInputError(f"{p}: run folder has no {RECORDS_FILENAME}")
            files.add((p / RECORDS_FILENAME).resolve())
        elif p.is_file():
            files.add(p.resolve())
        else:
            raise LeaderboardInputError(f"{p}: no such records file or run folder")
    return sorted(files)

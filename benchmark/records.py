"""Per-vertebra evaluation records: the one tidy file per run that the leaderboard reads.

One CSV row per (run, method, seed, case, vertebra of the label set) — every vertebra of the label set,
annotated or not, so that presence scores of absent vertebrae (the negatives of mAP) are kept. Columns, in file
order (the schema lives in ``leaderboard.schema`` so the leaderboard reads it without torch):

====================  =====  ==========================================================================================
column                kind   meaning
====================  =====  ==========================================================================================
run                   str    run name (the run folder's name)
method                str    registered method name (e.g. ``di2in_mp_sparsity``)
seed                  int    training seed
case                  str    case id
patient               str    patient id for the patient-level bootstrap (defaults to ``case``)
vertebra              str    label name, e.g. ``L2`` (``datamodules.labels``)
region                str    cervical / thoracic / lumbar / sacral
annotated             0/1    the vertebra has a true centroid in this case
true_{x,y,z}_mm       float  true centroid, world LPS mm; empty when not annotated
pred_{x,y,z}_mm       float  predicted centroid, world LPS mm (kept even when not predicted present; may be empty)
distance_mm           float  Euclidean distance when annotated and predicted present, else empty
identified            0/1    identified under the default convention (Glocker search, < 20 mm); the leaderboard
                             recomputes it for other conventions from the coordinates
score                 float  presence score in [0, 1] (empty if the method gives none)
pred_present          0/1    the method predicts the vertebra present
dataset               str    e.g. ``phantom``, ``csi2014``, ``verse2019``, ``folder``
split                 str    e.g. ``test``
method_order          int    optional: position of the method in the ablation (table row order)
seconds_per_case      float  optional: wall seconds to predict this case
params                float  optional: number of trainable parameters of the method
train_peak_memory_mb  float  optional: peak memory of the cell's training (MiB; the shared training's for a cell
                             evaluated on another cell's training)
peak_memory_mb        float  optional: peak memory while predicting the test split (MiB)
meta_*                str    case metadata, one column each, e.g. meta_metal, meta_curvature, meta_limited_fov
====================  =====  ==========================================================================================

Floats are written in Python's shortest round-trip form; empty means missing. Rows are sorted by
(run, method, seed, case, vertebra order) on every write, so the same results give a byte-identical file.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from spinebench.datamodules.atomic import write_text_atomic
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.labels import ALL_NAMES, REGION_OF, check_name
from spinebench.leaderboard.metrics import IDENTIFICATION_THRESHOLD_MM, identified, localization_distances_mm
from spinebench.leaderboard.schema import (
    META_PREFIX,
    OPTIONAL_COLUMNS,
    RECORDS_FILENAME,
    REQUIRED_COLUMNS,
    Records,
    column_kind,
    format_value,
    ordered_columns,
    read_records,
)

__all__ = ["RECORDS_FILENAME", "case_rows", "write_records", "append_records", "read_records", "read_rows", "Records"]

Row = dict[str, object]


def case_rows(
    *,
    run: str,
    method: str,
    seed: int,
    case: str,
    names: Sequence[str],
    true_mm: np.ndarray,
    pred_mm: np.ndarray,
    pred_present: np.ndarray,
    scores: np.ndarray | None = None,
    dataset: str,
    split: str,
    patient: str | None = None,
    metadata: Mapping[str, object] | None = None,
    method_order: int | None = None,
    seconds_per_case: float | None = None,
    params: float | None = None,
    train_peak_memory_mb: float | None = None,
    peak_memory_mb: float | None = None,
) -> list[Row]:
    """The K rows of one predicted case.

    ``true_mm, pred_mm (K, 3)`` world mm (NaN rows = absent), ``pred_present (K,)`` bool, ``scores (K,)``,
    ``names`` the label set's names (length K). ``metadata`` keys become ``meta_<key>`` columns (a key already
    starting with ``meta_`` is kept as is); values are written as text (bools as 0/1).
    """
    names = [check_name(n) for n in names]
    k = len(names)
    true_mm = np.asarray(true_mm, float)
    pred_mm = np.asarray(pred_mm, float)
    pred_present = np.asarray(pred_present, bool)
    scores = np.full(k, np.nan) if scores is None else np.asarray(scores, float)
    shapes = {"true_mm": (true_mm.shape, (k, 3)), "pred_mm": (pred_mm.shape, (k, 3)),
              "pred_present": (pred_present.shape, (k,)), "scores": (scores.shape, (k,))}
    for key, (got, want) in shapes.items():
        if got != want:
            raise InputError(f"case {case!r}: {key} has shape {got}, expected {want} for {k} label names")
    pred_present = pred_present & np.isfinite(pred_mm).all(-1)
    annotated = np.isfinite(true_mm).all(-1)
    dist = localization_distances_mm(true_mm, pred_mm, pred_present)
    hit = identified(true_mm, pred_mm, pred_present, search="glocker", threshold_mm=IDENTIFICATION_THRESHOLD_MM)
    meta = {}
    for key, value in sorted((metadata or {}).items()):
        col = key if key.startswith(META_PREFIX) else f"{META_PREFIX}{key}"
        meta[col] = int(value) if isinstance(value, (bool, np.bool_)) else value
    rows = []
    for i, name in enumerate(names):
        row: Row = {
            "run": run, "method": method, "seed": int(seed), "case": case,
            "patient": case if patient is None else patient, "vertebra": name, "region": REGION_OF[name],
            "annotated": bool(annotated[i]),
            "true_x_mm": true_mm[i, 0], "true_y_mm": true_mm[i, 1], "true_z_mm": true_mm[i, 2],
            "pred_x_mm": pred_mm[i, 0], "pred_y_mm": pred_mm[i, 1], "pred_z_mm": pred_mm[i, 2],
            "distance_mm": dist[i], "identified": bool(hit[i]), "score": scores[i],
            "pred_present": bool(pred_present[i]), "dataset": dataset, "split": split,
        }
        for col, value in (("method_order", method_order), ("seconds_per_case", seconds_per_case),
                           ("params", params), ("train_peak_memory_mb", train_peak_memory_mb),
                           ("peak_memory_mb", peak_memory_mb)):
            if value is not None:
                row[col] = value
        row.update(meta)
        rows.append(row)
    return rows


def _row_key(row: Row) -> tuple:
    return (str(row["run"]), str(row["method"]), int(row["seed"]), str(row["case"]), ALL_NAMES.index(row["vertebra"]))


def _to_text(rows: list[Row]) -> str:
    columns = ordered_columns(set().union(*(r.keys() for r in rows)) if rows else set(REQUIRED_COLUMNS))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in sorted(rows, key=_row_key):
        writer.writerow([format_value(row.get(c), column_kind(c)) for c in columns])
    return buf.getvalue()


def read_rows(path: str | os.PathLike) -> list[Row]:
    """The rows of a records file as dicts (validated; empty optional columns left out)."""
    return _records_to_rows(read_records(path))


def _records_to_rows(records: Records) -> list[Row]:
    names = list(records.columns)
    rows = []
    for i in range(len(records)):
        row: Row = {}
        for n in names:
            v = records[n][i]
            if n in OPTIONAL_COLUMNS and column_kind(n) == "int" and v == -1:
                continue  # an empty optional integer
            row[n] = v.item() if isinstance(v, np.generic) else v
        rows.append(row)
    return rows


def write_records(path: str | os.PathLike, rows: list[Row]) -> Path:
    """Write ``rows`` as a records CSV atomically (sorted, so byte-identical for the same rows)."""
    if not rows:
        raise InputError(f"{path}: no records to write")
    keys = [_row_key(r) for r in rows]
    if len(set(keys)) != len(keys):
        raise InputError(f"{path}: duplicate rows for the same (run, method, seed, case, vertebra)")
    write_text_atomic(path, _to_text(rows))
    return Path(path)


def append_records(path: str | os.PathLike, rows: list[Row]) -> Path:
    """Add ``rows`` to the records file (created if absent); rows with the same key are replaced.

    The whole file is rewritten atomically, so an interrupted append leaves the previous file intact.
    """
    existing = _records_to_rows(read_records(path)) if Path(path).is_file() else []
    new_keys = {_row_key(r) for r in rows}
    kept = [r for r in existing if _row_key(r) not in new_keys]
    return write_records(path, kept + list(rows))

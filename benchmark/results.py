"""Results of a run: cell test metrics from records, the run-level records file, projections (the leaderboard in
the terminal: ``benchmark.console_tables``).

The run-level ``records.csv`` is rebuilt from the cells' own files (in cell order), so a completed cell's rows
never change when later cells are added or an interrupted cell is resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinebench.benchmark.layout import RECORDS_FILENAME, cell_complete, cell_dir
from spinebench.benchmark.metrics import LocalizationIdentification, MultiLabelMeanAP
from spinebench.benchmark.records import _records_to_rows, read_records, write_records
from spinebench.leaderboard.evaluate import pooled_case_results
from spinebench.leaderboard.metrics import CaseStats
from spinebench.leaderboard.projections import pick_by_result, write_case_projection


def rows_to_arrays(rows: list[dict], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per-case arrays from records rows: true/pred ``(N, K, 3)``, present/annotated/scores ``(N, K)``."""
    index = {n: k for k, n in enumerate(names)}
    cases: dict[str, int] = {}
    for row in rows:
        cases.setdefault(str(row["case"]), len(cases))
    n, k = len(cases), len(names)
    true_mm, pred_mm = np.full((n, k, 3), np.nan), np.full((n, k, 3), np.nan)
    present, scores = np.zeros((n, k), bool), np.full((n, k), np.nan)
    for row in rows:
        i, j = cases[str(row["case"])], index[row["vertebra"]]
        true_mm[i, j] = [_f(row[f"true_{a}_mm"]) for a in "xyz"]
        pred_mm[i, j] = [_f(row[f"pred_{a}_mm"]) for a in "xyz"]
        present[i, j] = bool(row["pred_present"])
        scores[i, j] = _f(row.get("score"))
    return {"true_mm": true_mm, "pred_mm": pred_mm, "present": present, "scores": scores,
            "annotated": np.isfinite(true_mm).all(-1), "cases": np.array(list(cases))}  # fmt: skip


def _f(value: Any) -> float:
    return float("nan") if value is None or value == "" else float(value)


def test_metrics(rows: list[dict], names: tuple[str, ...]) -> dict[str, float]:
    """``test/<stat>`` for all vertebrae and ``test/<region>/<stat>`` per region (Glocker, 20 mm, pooled)."""
    arrays = rows_to_arrays(rows, names)
    metric = LocalizationIdentification(names, sync_on_compute=False)  # rank 0 holds every case already
    metric.update(torch.as_tensor(arrays["true_mm"]), torch.as_tensor(arrays["pred_mm"]),
                  torch.as_tensor(arrays["present"]))
    out = metric.flat("test/")
    ap = MultiLabelMeanAP(sync_on_compute=False)
    ap.update(torch.as_tensor(arrays["annotated"]), torch.as_tensor(arrays["scores"]))
    out["test/map"] = float(ap.compute())
    return out


def write_run_records(out_dir: Path, cfg) -> Path | None:
    """Rebuild ``<out>/records.csv`` from the complete cells' files (atomic, sorted, byte-stable)."""
    rows: list[dict] = []
    for entry, seed in cfg.cells():
        folder = cell_dir(out_dir, entry, seed)
        path = folder / RECORDS_FILENAME
        if cell_complete(folder) and path.is_file():
            rows += _records_to_rows(read_records(path))
    if not rows:
        return None
    return write_records(Path(out_dir) / RECORDS_FILENAME, rows)


def write_projections(folder: Path, datamodule, predictions: dict[str, Any], count: int, method: str,
                      rows: list[dict]) -> list[Path]:
    """Projection files (``<folder>/<case>.npz``) of ``count`` test cases for the leaderboard figures, picked by
    result from the cell's records ``rows``: with 3, its best, median and worst case (``pick_by_result``)."""
    names = tuple(datamodule.label_names)
    arrays = rows_to_arrays(rows, names)
    stats = CaseStats.from_arrays(arrays["true_mm"], arrays["pred_mm"], arrays["present"], names)
    results = {c: r for c, r in pooled_case_results(arrays["cases"], stats).items() if c in predictions}
    written = []
    for _, case_id in pick_by_result(results, max(0, count)):
        pred, pred_mm = predictions[case_id]
        info = datamodule.case_info(case_id)
        image = np.asarray(datamodule._by_id[case_id].load_array())
        written.append(
            write_case_projection(
                Path(folder) / f"{case_id}.npz", image=image, geometry=info.geometry,
                true_mm=info.centroids_world_mm, pred_mm=pred_mm, pred_present=pred.present,
                names=datamodule.label_names, case=case_id, method=method,
            )
        )  # fmt: skip
    return written

"""Results of a run: cell test metrics from records, the run-level records file, projections, the leaderboard.

The run-level ``records.csv`` is rebuilt from the cells' own files (in cell order), so a completed cell's rows
never change when later cells are added or an interrupted cell is resumed.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from leaderboard.metrics import REGION_COLUMNS

CELL_RECORDS = "records.csv"


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
    import torch

    from benchmark.metrics import LocalizationIdentification, MultiLabelMeanAP

    arrays = rows_to_arrays(rows, names)
    metric = LocalizationIdentification(names, sync_on_compute=False)  # rank 0 holds every case already
    metric.update(torch.as_tensor(arrays["true_mm"]), torch.as_tensor(arrays["pred_mm"]),
                  torch.as_tensor(arrays["present"]))
    out = metric.flat("test/")
    ap = MultiLabelMeanAP(sync_on_compute=False)
    ap.update(torch.as_tensor(arrays["annotated"]), torch.as_tensor(np.nan_to_num(arrays["scores"], nan=0.0)))
    out["test/map"] = float(ap.compute())
    return out


def write_run_records(out_dir: Path, cfg) -> Path | None:
    """Rebuild ``<out>/records.csv`` from the complete cells' files (atomic, sorted, byte-stable)."""
    from benchmark.cell import cell_complete, cell_dir
    from benchmark.records import _records_to_rows, read_records, write_records

    rows: list[dict] = []
    for entry, seed in cfg.cells():
        folder = cell_dir(out_dir, entry, seed)
        path = folder / CELL_RECORDS
        if cell_complete(folder) and path.is_file():
            rows += _records_to_rows(read_records(path))
    if not rows:
        return None
    return write_records(Path(out_dir) / "records.csv", rows)


def write_projections(folder: Path, datamodule, predictions: dict[str, Any], count: int, method: str) -> list[Path]:
    """Projection files (``<folder>/<case>.npz``) of the first ``count`` test cases for the leaderboard figures."""
    from leaderboard.projections import write_case_projection

    written = []
    for case_id in sorted(predictions)[: max(0, count)]:
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


def build_leaderboard(out_dir: Path, console=None) -> Path | None:
    """Build ``<out>/leaderboard`` from ``records.csv`` and print the per-region table and efficiency block."""
    records = Path(out_dir) / "records.csv"
    if not records.is_file():
        return None
    board_dir = Path(out_dir) / "leaderboard"
    from leaderboard.build import build_leaderboard as build

    outputs = build([records], board_dir, projections=[Path(out_dir) / "projections"])
    if console is not None:
        print_summary(records, console)
        console.print(f"leaderboard: {outputs.html} (+ .md, .csv, .tex, plots/)")
    return board_dir


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def print_summary(records: Path, console) -> None:
    """The per-region Id.Rate / mean error table and the efficiency block, in the terminal (rich)."""
    from rich.table import Table

    from benchmark.records import _records_to_rows, read_records

    rows = _records_to_rows(read_records(records))
    by_method: dict[str, list[dict]] = defaultdict(list)
    order: dict[str, int] = {}
    for row in rows:
        by_method[row["method"]].append(row)
        order.setdefault(row["method"], int(row.get("method_order", len(order)) or 0))
    table = Table(title=f"Test set, per region: Id.Rate % / mean error mm ({records.parent.name})")
    table.add_column("method")
    for region in REGION_COLUMNS:
        table.add_column(region, justify="right")
    eff = Table(title="Efficiency")
    for col in ("method", "s / test case", "parameters", "peak memory MiB"):
        eff.add_column(col, justify="right" if col != "method" else "left")
    from datamodules.labels import ALL_NAMES

    for method in sorted(by_method, key=lambda m: order[m]):
        method_rows = by_method[method]
        names = tuple(n for n in ALL_NAMES if any(r["vertebra"] == n for r in method_rows))
        cells = []
        for seed in sorted({r["seed"] for r in method_rows}):
            m = test_metrics([r for r in method_rows if r["seed"] == seed], names)
            cells.append(m)
        row_text = [method]
        for region in REGION_COLUMNS:
            prefix = "test/" if region == "all" else f"test/{region}/"
            rate = _nanmean([c[f"{prefix}id_rate"] for c in cells])
            mean = _nanmean([c[f"{prefix}mean_mm"] for c in cells])
            mean_text = f"{mean:.1f}" if np.isfinite(mean) else "–"
            row_text.append("–" if not np.isfinite(rate) else f"{100 * rate:.1f} / {mean_text}")
        table.add_row(*row_text)
        per_case = {(r["seed"], r["case"]): r for r in method_rows}.values()
        secs = [_f(r.get("seconds_per_case")) for r in per_case]
        params = [_f(r.get("params")) for r in per_case]
        mem = [_f(r.get("peak_memory_mb")) for r in per_case]
        eff.add_row(method, f"{_nanmean(secs):.3f}", f"{int(max(params)):,}", f"{max(mem):.0f}")
    console.print(table)
    console.print(eff)

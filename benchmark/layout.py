"""The run folder's layout: where a run keeps its cells, and each cell's ``result.json`` (``CellResult``).

``<out>/cells/<method>/seed<k>/`` holds one (method, seed) cell; its ``result.json`` is written last, so a cell
is complete exactly when that file exists. The records file name is the leaderboard's (``RECORDS_FILENAME``), for
the run and for each cell. Everything that reads or writes a run folder finds its files through this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spinebench.datamodules.atomic import json_default
from spinebench.datamodules.errors import InputError
from spinebench.leaderboard.schema import RECORDS_FILENAME

RESULT_FILE = "result.json"
CURVES_DIR = "curves"  # <cell>/curves/metrics.csv: Lightning's CSVLogger of the training

__all__ = ["RECORDS_FILENAME", "RESULT_FILE", "CURVES_DIR", "CellResult", "cell_dir", "cell_complete",
           "evaluated_checkpoint"]


@dataclass
class CellResult:
    method: str
    seed: int
    metrics: dict[str, float]
    records_path: Path | None = None
    # the checkpoint the test sets were evaluated with: best.ckpt, or last.ckpt with trainer.test_checkpoint: last
    best_checkpoint: Path | None = None
    resumed_from_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, folder: Path) -> str:
        """The result as written to ``<folder>/result.json``: paths relative to the cell ``folder``, so a copied or
        moved run folder points at its own files, never at the original's."""
        d = dataclasses.asdict(self)
        for key in ("records_path", "best_checkpoint"):
            value = getattr(self, key)
            d[key] = os.path.relpath(Path(value).absolute(), Path(folder).absolute()) if value else None
        return json.dumps(d, indent=2, sort_keys=True, default=json_default) + "\n"

    @classmethod
    def read(cls, folder: Path) -> CellResult:
        """``<folder>/result.json`` with its paths resolved against ``folder``. Runs written before the paths were
        relative hold absolute or working-folder-relative paths: those are kept when that is where the file is."""
        d = json.loads((Path(folder) / RESULT_FILE).read_text())

        def path(key: str) -> Path | None:
            if not d.get(key):
                return None
            inside = Path(folder) / d[key]
            return inside if inside.exists() or not Path(d[key]).exists() else Path(d[key])

        return cls(d["method"], d["seed"], d["metrics"], path("records_path"), path("best_checkpoint"),
                   d.get("resumed_from_step"), d.get("extra", {}))


def cell_dir(out_dir: Path, entry, seed: int) -> Path:
    """``<out>/cells/<method>/seed<k>`` (``entry``: a ``MethodEntry``, or anything with the method's ``name``)."""
    return Path(out_dir) / "cells" / entry.name / f"seed{seed}"


def cell_complete(folder: Path) -> bool:
    """A cell is complete once its ``result.json`` exists (written last)."""
    return (Path(folder) / RESULT_FILE).is_file()


def evaluated_checkpoint(run_dir: Path, folder: Path, result: CellResult) -> Path:
    """The checkpoint a complete cell's test results came from: the one ``result.json`` names if it lies inside
    the run folder, else the cell's own ``best.ckpt`` (runs written before paths were relative name it relative to
    where they ran). One outside the run folder is never loaded."""
    recorded, own = result.best_checkpoint, Path(folder) / "checkpoints" / "best.ckpt"
    inside = lambda path: path.resolve().is_relative_to(Path(run_dir).resolve())  # noqa: E731
    if recorded is not None and inside(recorded) and recorded.is_file():
        return recorded
    if own.is_file():
        return own
    if recorded is not None and not inside(recorded):
        raise InputError(f"--run {run_dir}: the checkpoint of {result.method} seed {result.seed} lies outside the run "
                         f"folder ({recorded}); a run folder must hold its own checkpoints")
    raise InputError(f"--run {run_dir}: checkpoint of {result.method} seed {result.seed} is missing ({recorded or own})")

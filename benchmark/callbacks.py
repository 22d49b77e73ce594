"""Lightning callbacks of the runner: validation identification rate, per-case test timing, atomic checkpoints.

``ValidationIdentification`` turns the methods' ``validation_step`` outputs ``{"predictions": [VolumePrediction]}``
into ``val/id_rate`` and ``val/mean_error_mm`` with the shared metrics, so every method is selected
(``ModelCheckpoint(monitor="val/id_rate")``) by the same rule. The preprocessed volume is canonical and
isotropic, so voxel offsets times the spacing are millimetres; distances need no world mapping here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.atomic import atomic_path

VAL_ID_RATE = "val/id_rate"
VAL_MEAN_ERROR = "val/mean_error_mm"


def batch_truth_mm(batch: dict, index: int) -> np.ndarray:
    """``(K, 3)`` true centroids of batch item ``index`` in mm of the preprocessed frame, NaN where absent."""
    centroids = batch["centroids_vox"][index].detach().cpu().double().numpy()
    present = batch["present"][index].detach().cpu().numpy().astype(bool)
    spacing = batch["spacing_mm"][index].detach().cpu().double().numpy()
    out = centroids * spacing
    out[~present] = np.nan
    return out


class ValidationIdentification(L.Callback):
    """Logs ``val/id_rate`` (Glocker, 20 mm, pooled) and ``val/mean_error_mm`` from validation predictions.

    Each rank keeps its cases' arrays; at epoch end they are gathered (``all_gather_object``) and one shared
    metric instance computes the result, identical on every rank (the eval sampler gives each case to exactly
    one rank, so every case counts once).
    """

    def __init__(self, label_names: tuple[str, ...] | list[str]) -> None:
        self.label_names = tuple(label_names)
        self._cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cases = []

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if not isinstance(outputs, dict) or "predictions" not in outputs:
            return
        spacing = batch["spacing_mm"].detach().cpu().double().numpy()
        for i, pred in enumerate(outputs["predictions"]):
            self._cases.append((batch_truth_mm(batch, i), pred.centroids_vox * spacing[i], pred.present))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from benchmark.metrics import LocalizationIdentification

        cases = _gather_objects(self._cases)
        self._cases = []
        metric = LocalizationIdentification(self.label_names, sync_on_compute=False)
        if cases:
            metric.update(
                torch.as_tensor(np.stack([c[0] for c in cases])),
                torch.as_tensor(np.stack([c[1] for c in cases])),
                torch.as_tensor(np.stack([c[2] for c in cases])),
            )
            values = metric.compute()
        else:
            values = {"id_rate": torch.tensor(float("nan")), "mean_mm": torch.tensor(float("nan"))}
        # The same number on every rank: no further reduction.
        pl_module.log(VAL_ID_RATE, _as_float(values, "id_rate"), sync_dist=False, prog_bar=True)
        pl_module.log(VAL_MEAN_ERROR, _as_float(values, "mean_mm"), sync_dist=False)


def _gather_objects(local: list) -> list:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        return [item for part in parts for item in part]
    return list(local)


def _as_float(values: Any, key: str) -> torch.Tensor:
    value = values[key] if isinstance(values, dict) else values
    value = torch.as_tensor(value, dtype=torch.float32).reshape(-1)[0]
    # No matched vertebra gives NaN mean error; a NaN would break "max" checkpoint selection.
    return torch.nan_to_num(value, nan=0.0 if key == "id_rate" else 1e6)


class PredictTiming(L.Callback):
    """Wall seconds of each predict batch (B = 1: one test case), in batch order of this rank."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._t0 = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds.append(time.perf_counter() - self._t0)


class PhaseTiming(L.Callback):
    """Wall seconds of a fit and of its validation loops (sanity check included), for the cadence figures: a
    cell records ``train/seconds`` and ``val/seconds`` (the share validation takes is their ratio)."""

    def __init__(self) -> None:
        self.fit_seconds = 0.0
        self.validation_seconds = 0.0
        self._fit_t0 = self._val_t0 = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit_seconds += time.perf_counter() - self._fit_t0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validation_seconds += time.perf_counter() - self._val_t0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a run killed mid-write leaves the old file intact."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

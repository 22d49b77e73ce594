"""Lightning callbacks of the runner: validation identification rate, per-case test timing, phase timing, progress
lines, atomic checkpoints.

``ValidationIdentification`` turns the methods' ``validation_step`` outputs ``{"predictions": [VolumePrediction]}``
into ``val/id_rate`` and ``val/mean_error_mm`` with the shared metrics, so every method is selected
(``ModelCheckpoint(monitor="val/id_rate")``) by the same rule. The preprocessed volume is canonical and
isotropic, so voxel offsets times the spacing are millimetres; distances need no world mapping here.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from spinebench.benchmark.metrics import LocalizationIdentification
from spinebench.datamodules.atomic import atomic_path

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


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLines(L.Callback):
    """Where no progress bar is drawn (a log file, a scheduler, the parallel workers of a run): one line every
    ``interval_s`` seconds with the cell, step/total, the latest training loss, steps per second and the training's
    ETA. Global rank 0 only."""

    def __init__(self, label: str, interval_s: float = 30.0, stream=None) -> None:
        self.label, self.interval_s, self.stream = label, interval_s, stream
        self._t0 = self._last = 0.0
        self._step0 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last = time.monotonic()
        self._step0 = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last < self.interval_s:
            return
        self._last = now
        step = trainer.global_step
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        rate = (step - self._step0) / max(now - self._t0, 1e-9)
        loss = trainer.callback_metrics.get("train/loss")
        parts = [f"step {step}/{int(total)}" if math.isfinite(total) else f"step {step}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        parts.append(f"{rate:.2f} steps/s")
        if rate > 0 and math.isfinite(total):
            parts.append(f"ETA {duration((total - step) / rate)}")
        print(f"  {self.label}: " + ", ".join(parts), file=self.stream or sys.stdout, flush=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a run killed mid-write leaves the old file intact."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

"""One (method, seed) cell: train with the best-``val/id_rate`` checkpoint, predict the test split, write records.

``train_and_evaluate_cell`` is also the objective body of ``spinebench tune`` (extra callbacks and loggers,
``evaluate_test=False``). ``evaluate_checkpoint`` evaluates a saved checkpoint on the test split with any
device setting; under DDP each rank predicts a disjoint share (Lightning's unrepeated sampler for predict) and
rank 0 gathers them, so every case is evaluated exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from benchmark.callbacks import VAL_ID_RATE, AtomicCheckpointIO, PredictTiming, ValidationIdentification
from benchmark.config import ExperimentConfig, MethodEntry, TrainerConfig
from datamodules.atomic import write_text_atomic

RESULT_FILE = "result.json"
CELL_RECORDS = "records.csv"
CURVES_DIR = "curves"  # <cell>/curves/metrics.csv: Lightning's CSVLogger of the training


@dataclass
class CellResult:
    method: str
    seed: int
    metrics: dict[str, float]
    records_path: Path | None = None
    best_checkpoint: Path | None = None
    resumed_from_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["records_path"] = str(self.records_path) if self.records_path else None
        d["best_checkpoint"] = str(self.best_checkpoint) if self.best_checkpoint else None
        return json.dumps(d, indent=2, sort_keys=True, default=_json_default) + "\n"

    @classmethod
    def read(cls, folder: Path) -> CellResult:
        d = json.loads((Path(folder) / RESULT_FILE).read_text())
        return cls(
            d["method"], d["seed"], d["metrics"], Path(d["records_path"]) if d.get("records_path") else None,
            Path(d["best_checkpoint"]) if d.get("best_checkpoint") else None, d.get("resumed_from_step"),
            d.get("extra", {}),
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def cell_dir(out_dir: Path, entry: MethodEntry, seed: int) -> Path:
    """``<out>/cells/<method>/seed<k>``."""
    return Path(out_dir) / "cells" / entry.name / f"seed{seed}"


def cell_complete(folder: Path) -> bool:
    """A cell is complete once its ``result.json`` exists (written last)."""
    return (Path(folder) / RESULT_FILE).is_file()


# --- building blocks --------------------------------------------------------------------------------
def set_determinism(seed: int, trainer_cfg: TrainerConfig) -> None:
    """Seed every RNG (and data-loader workers); deterministic kernels are switched on by the Trainer."""
    L.seed_everything(seed, workers=True, verbose=False)
    if trainer_cfg.accelerator == "cpu":
        # Same thread count on every run: float reductions then add up in the same order. Small 3D convs on a
        # busy 2-core machine run several times faster on one thread than on two (configs/default.yaml).
        wanted = trainer_cfg.num_threads or torch.get_num_threads()
        torch.set_num_threads(max(1, min(wanted, os.cpu_count() or 1)))


def build_method(cfg: ExperimentConfig, entry: MethodEntry):
    from methods.registry import get_method_spec

    return get_method_spec(entry.name).module_cls(cfg.method_config(entry))


def build_datamodule(cfg: ExperimentConfig, method, seed: int):
    """The shared datamodule, configured from the method's data requirements."""
    from datamodules.datamodule import VertebraDataModule

    return VertebraDataModule(cfg.data.configure_for(method.data_requirements()))


def label_names(cfg: ExperimentConfig) -> tuple[str, ...]:
    from datamodules.labels import get_label_set

    return tuple(get_label_set(cfg.data.label_set).names)


def quiet_lightning() -> None:
    """Lightning's info lines (GPU available, tips, "fit stopped") and known-harmless warnings off: the runner
    prints its own progress (cell i/N, the rich bar, the leaderboard)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*LeafSpec.*", ".*val_check_interval.*", ".*does not have many workers.*",
                    ".*the number of training batches.*", ".*smaller than the logging interval.*",
                    ".*Checkpoint directory .* exists and is not empty.*", ".*predict_dataloader.*"):
        warnings.filterwarnings("ignore", message=message)


def build_trainer(
    trainer_cfg: TrainerConfig,
    *,
    callbacks: Sequence[L.Callback] = (),
    loggers: Sequence[Any] = (),
    default_root_dir: Path | None = None,
    progress: bool = True,
    for_eval: bool = False,
) -> L.Trainer:
    from lightning.pytorch.callbacks import RichProgressBar

    quiet_lightning()
    strategy = trainer_cfg.strategy
    if strategy == "auto" and (trainer_cfg.devices > 1 or trainer_cfg.num_nodes > 1):
        strategy = "ddp"
    show_bar = progress and trainer_cfg.enable_progress_bar and sys.stdout.isatty()
    cbs = list(callbacks) + ([RichProgressBar(leave=False)] if show_bar else [])
    deterministic: bool | str = trainer_cfg.deterministic
    if deterministic and trainer_cfg.accelerator not in ("cpu",):
        deterministic = "warn"  # some CUDA kernels (trilinear upsampling backward) have no deterministic version
    kwargs: dict[str, Any] = dict(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=strategy,
        precision=trainer_cfg.precision,
        deterministic=deterministic,
        callbacks=cbs,
        logger=list(loggers) if loggers else False,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        default_root_dir=str(default_root_dir) if default_root_dir else None,
        plugins=[AtomicCheckpointIO()],
    )
    if not for_eval:
        kwargs.update(
            max_epochs=trainer_cfg.max_epochs,
            max_steps=trainer_cfg.max_steps,
            max_time=trainer_cfg.max_time,
            limit_train_batches=trainer_cfg.limit_train_batches,
            limit_val_batches=trainer_cfg.limit_val_batches,
            val_check_interval=trainer_cfg.val_check_interval,
            check_val_every_n_epoch=trainer_cfg.check_val_every_n_epoch,
            accumulate_grad_batches=trainer_cfg.accumulate_grad_batches,
            gradient_clip_val=trainer_cfg.gradient_clip_val,
            log_every_n_steps=trainer_cfg.log_every_n_steps,
            num_sanity_val_steps=0,
        )
    else:
        kwargs.update(enable_checkpointing=False)
    return L.Trainer(**kwargs)


def _checkpoint_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return int(ckpt.get("global_step", 0))


def load_weights(method, checkpoint: Path, shared: bool = False) -> None:
    """Load a checkpoint's weights into ``method`` (whose shape prior is already fitted).

    ``shared``: the checkpoint may come from another cell of the same training unit (``benchmark.schedule``),
    whose inference-only buffers (e.g. message-passing kernels) differ; those are kept as ``fit_shape_prior``
    made them, and every other tensor must match by name.
    """
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not shared:
        method.load_state_dict(ckpt["state_dict"])
        return
    state, theirs = method.state_dict(), ckpt["state_dict"]
    wrong = sorted(k for k in set(state) ^ set(theirs) if k.startswith("net."))
    if wrong:
        raise RuntimeError(f"checkpoint {checkpoint} does not fit {type(method).__name__}: {', '.join(wrong[:5])}")
    method.load_state_dict({k: theirs.get(k, v) for k, v in state.items()})


def parameter_count(method) -> int:
    return int(sum(p.numel() for p in method.parameters()))


# --- the cell --------------------------------------------------------------------------------------
def train_and_evaluate_cell(
    cfg: ExperimentConfig,
    entry: MethodEntry,
    seed: int,
    folder: Path,
    *,
    callbacks: Sequence[L.Callback] = (),
    loggers: Sequence[Any] = (),
    evaluate_test: bool = True,
    progress: bool = True,
    run_name: str | None = None,
    method_order: int | None = None,
    projections_dir: Path | None = None,
    projection_cases: int = 0,
    on_datamodule: Callable[[Any], None] | None = None,
) -> CellResult:
    """Train ``entry`` with ``seed`` into ``folder`` (resuming from its ``last.ckpt``), evaluate, return metrics.

    Metrics: ``val/id_rate`` (best), and with ``evaluate_test`` the test statistics per region
    (``test/id_rate``, ``test/mean_mm``, ``test/<region>/...``). Rank 0 writes ``records.csv`` and
    ``result.json`` (last, marking the cell complete); ``projection_cases`` test cases get projection files
    in ``projections_dir`` for the leaderboard figures. Every DDP rank calls this; only rank 0 writes.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = Path(folder)
    trainer_cfg = cfg.trainer_for(entry)
    set_determinism(seed, trainer_cfg)
    method = build_method(cfg, entry)
    datamodule = build_datamodule(cfg, method, seed)
    names = label_names(cfg)
    ckpt_dir = folder / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume_step = _checkpoint_step(last)

    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=VAL_ID_RATE, mode="max", save_top_k=1,
        save_last=False, enable_version_counter=False, auto_insert_metric_name=False,
    )  # fmt: skip
    # "last.ckpt" as the one kept unmonitored checkpoint (newest wins): Lightning's save_last=True only writes
    # when another checkpoint was saved in the same step, which a top-0 callback never does.
    last_cbs = [ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                                enable_version_counter=False)]
    if trainer_cfg.checkpoint_every_n_steps:
        last_cbs.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
            every_n_train_steps=trainer_cfg.checkpoint_every_n_steps,
        ))  # fmt: skip
    from lightning.pytorch.loggers import CSVLogger

    # the learning curves of every training, tracked or not: <cell>/curves/metrics.csv (leaderboard.curves)
    curves = CSVLogger(save_dir=str(folder), name="", version=CURVES_DIR)
    trainer = build_trainer(
        trainer_cfg,
        callbacks=[ValidationIdentification(names), best_cb, *last_cbs, *callbacks],
        loggers=[*loggers, curves],
        default_root_dir=folder,
        progress=progress,
    )
    trainer.fit(method, datamodule=datamodule, ckpt_path=str(last) if resume_step is not None else None)
    rank_zero = trainer.is_global_zero
    if on_datamodule is not None and rank_zero:
        on_datamodule(datamodule)

    best = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    if best is None or not best.is_file():
        best = last if last.is_file() else None
    best_score = best_cb.best_model_score
    metrics: dict[str, float] = {
        VAL_ID_RATE: float(best_score) if best_score is not None else float("nan"),
        "train/steps": float(trainer.global_step),
        "params": float(parameter_count(method)),
    }
    if not evaluate_test:
        result = CellResult(entry.name, seed, metrics, None, best, resume_step)
        if rank_zero:
            write_text_atomic(folder / RESULT_FILE, result.to_json())
        return result
    return evaluate_and_write(
        cfg, entry, seed, folder, best, method=method, datamodule=datamodule, metrics=metrics,
        resumed_from_step=resume_step, run_name=run_name, method_order=method_order, progress=progress,
        projections_dir=projections_dir, projection_cases=projection_cases,
    )  # fmt: skip


def evaluate_and_write(
    cfg: ExperimentConfig,
    entry: MethodEntry,
    seed: int,
    folder: Path,
    checkpoint: Path | None,
    *,
    method=None,
    datamodule=None,
    metrics: dict[str, float] | None = None,
    resumed_from_step: int | None = None,
    run_name: str | None = None,
    method_order: int | None = None,
    progress: bool = False,
    projections_dir: Path | None = None,
    projection_cases: int = 0,
    extra: dict[str, Any] | None = None,
) -> CellResult:
    """Evaluate ``checkpoint`` on the test split as cell ``entry``; rank 0 writes its records and ``result.json``.

    ``method`` (built for ``entry``) and ``datamodule`` are reused when given. A cell that shares another
    cell's training passes that cell's checkpoint and ``extra={"trained_in": ...}``.
    """
    folder = Path(folder)
    metrics = dict(metrics or {})
    rows, eval_info = evaluate_checkpoint(
        cfg, entry, seed, checkpoint, method=method, datamodule=datamodule, run_name=run_name or "run",
        method_order=method_order, progress=progress,
    )  # fmt: skip
    import torch.distributed as dist

    rank_zero = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    records_path = None
    if rank_zero:
        from benchmark.records import write_records
        from benchmark.results import test_metrics, write_projections

        predictions = eval_info.pop("_predictions")
        used_datamodule = eval_info.pop("_datamodule")
        records_path = write_records(folder / CELL_RECORDS, rows)
        metrics.update(test_metrics(rows, label_names(cfg)))
        metrics.update(eval_info)
        if projections_dir is not None and projection_cases > 0:
            write_projections(projections_dir, used_datamodule, predictions, projection_cases, entry.name)
    result = CellResult(entry.name, seed, metrics, records_path, checkpoint, resumed_from_step, dict(extra or {}))
    if rank_zero:
        write_text_atomic(folder / RESULT_FILE, result.to_json())
    return result


# --- evaluation ----------------------------------------------------------------------------------
def evaluate_checkpoint(
    cfg: ExperimentConfig,
    entry: MethodEntry,
    seed: int,
    checkpoint: Path | None,
    *,
    method=None,
    datamodule=None,
    trainer_cfg: TrainerConfig | None = None,
    run_name: str = "run",
    method_order: int | None = None,
    progress: bool = False,
) -> tuple[list[dict], dict[str, Any]]:
    """Predict the test split with ``checkpoint``'s weights; returns (records rows on rank 0, info).

    Rows are complete on rank 0 only (other ranks get ``[]``); every test case appears exactly once.
    """
    trainer_cfg = trainer_cfg or cfg.trainer_for(entry)
    if method is None:
        set_determinism(seed, trainer_cfg)
        method = build_method(cfg, entry)
    if datamodule is None:
        datamodule = build_datamodule(cfg, method, seed)
    prepare_for_test(datamodule)
    method.fit_shape_prior(datamodule.train_centroids_vox())
    if checkpoint is not None:
        load_weights(method, checkpoint, shared=True)
    timing = PredictTiming()
    trainer = build_trainer(trainer_cfg, callbacks=[timing], progress=progress, for_eval=True)
    if torch.cuda.is_available() and trainer_cfg.accelerator in ("gpu", "cuda", "auto"):
        torch.cuda.reset_peak_memory_stats()
    outputs = trainer.predict(method, datamodule=datamodule) or []
    local = []
    for out, seconds in zip(outputs, timing.seconds):
        for case_id, pred in zip(out["case_id"], out["predictions"]):
            local.append((str(case_id), pred, seconds / max(1, len(out["predictions"]))))
    gathered = _gather(local)
    if trainer.global_rank != 0:
        return [], {}
    peak_mb = _peak_memory_mb(trainer_cfg)
    params = parameter_count(method)
    names = label_names(cfg)
    rows: list[dict] = []
    predictions: dict[str, Any] = {}
    seen: set[str] = set()
    from benchmark.records import case_rows

    for case_id, pred, seconds in gathered:
        if case_id in seen:  # defensive: a padded sampler would duplicate cases
            continue
        seen.add(case_id)
        info = datamodule.case_info(case_id)
        pred_mm = info.geometry.vox_to_world(pred.centroids_vox)
        predictions[case_id] = (pred, pred_mm)
        rows += case_rows(
            run=run_name, method=entry.name, seed=seed, case=case_id, names=names,
            true_mm=info.centroids_world_mm, pred_mm=pred_mm, pred_present=pred.present, scores=pred.scores,
            dataset=info.dataset, split="test", patient=_patient(info), metadata=_flat_metadata(info.metadata),
            method_order=method_order, seconds_per_case=seconds, params=float(params), peak_memory_mb=peak_mb,
        )  # fmt: skip
    n_cases = len(seen)
    total_s = sum(s for _, _, s in gathered)
    info = {
        "test/cases": float(n_cases),
        "test/seconds_per_case": total_s / n_cases if n_cases else math.nan,
        "peak_memory_mb": peak_mb,
        "_predictions": predictions,
        "_datamodule": datamodule,
    }
    return rows, info


def _gather(local: list) -> list:
    """All ranks' (case_id, prediction, seconds) on every rank, in case-id order (a no-op without DDP)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everything: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everything, local)
        local = [item for part in everything for item in part]
    return sorted(local, key=lambda item: item[0])


def _peak_memory_mb(trainer_cfg: TrainerConfig) -> float:
    if trainer_cfg.accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # CPU: peak resident set of this process (KiB on Linux), training included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- datamodule glue (the datamodule's per-case accessors) ----------------------------------------
def prepare_for_test(datamodule) -> None:
    datamodule.prepare_data()
    datamodule.setup("test")


def _patient(info) -> str | None:
    patient = info.metadata.get("patient") or info.metadata.get("patient_id")
    return str(patient) if patient else None


def _flat_metadata(metadata: dict) -> dict[str, object]:
    """Case conditions for ``meta_*`` columns: phantom difficulty switches (``{"applied": bool}`` entries) as
    flags, plus ``curvature`` (scoliosis or abnormal kyphosis); identifiers and nested settings are left out."""
    out: dict[str, object] = {}
    for key, value in metadata.items():
        if isinstance(value, dict) and isinstance(value.get("applied"), bool):
            out[key] = value["applied"]
    if "scoliosis" in out or "kyphosis" in out:
        out["curvature"] = bool(out.get("scoliosis")) or bool(out.get("kyphosis"))
    return out



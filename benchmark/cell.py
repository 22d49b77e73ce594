"""One (method, seed) cell: train, keep the best-``val/id_rate`` (or the last) checkpoint, predict the test split,
write records.

``train_and_evaluate_cell`` is also the objective body of ``spinebench tune`` (extra callbacks and loggers,
``evaluate_test=False``). ``evaluate_checkpoint`` evaluates a saved checkpoint on the test split with any
device setting; under DDP each rank predicts a disjoint share (Lightning's unrepeated sampler for predict) and
rank 0 gathers them, so every case is evaluated exactly once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from spinebench.benchmark.builders import (
    _checkpoint_step, build_datamodule, build_method, build_trainer, label_names, load_weights, parameter_count,
    set_determinism,
)  # fmt: skip
from spinebench.benchmark.callbacks import VAL_ID_RATE, PhaseTiming, PredictTiming, ValidationIdentification
from spinebench.benchmark.config import ExperimentConfig, MethodEntry, TrainerConfig
from spinebench.benchmark.layout import CURVES_DIR, RECORDS_FILENAME, RESULT_FILE, CellResult
from spinebench.benchmark.memory import PeakMemory
from spinebench.benchmark.records import case_rows, write_records
from spinebench.benchmark.results import test_metrics, write_projections
from spinebench.datamodules.atomic import write_text_atomic
from spinebench.datamodules.datamodule import SkippedCaseWarning
from spinebench.datamodules.errors import InputError

TRAIN_PEAK = "train_peak_memory_mb"  # metric: peak memory of the cell's training (benchmark.memory)
TEST_SETS = "test_sets"  # metrics of a further test set: test_sets/<name>/id_rate, ... (as test/... of the run's own)


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
    processes: int = 1,
) -> CellResult:
    """Train ``entry`` with ``seed`` into ``folder`` (resuming from its ``last.ckpt``), evaluate, return metrics.

    Metrics: ``val/id_rate`` (best), and with ``evaluate_test`` the test statistics per region
    (``test/id_rate``, ``test/mean_mm``, ``test/<region>/...``). Rank 0 writes ``records.csv`` and
    ``result.json`` (last, marking the cell complete); ``projection_cases`` test cases get projection files
    in ``projections_dir`` for the leaderboard figures. Every DDP rank calls this; only rank 0 writes.
    ``processes``: how many processes of the run share the machine (they share its free cores, ``benchmark.threads``).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = Path(folder)
    trainer_cfg = cfg.trainer_for(entry)
    set_determinism(seed, trainer_cfg, processes)
    method = build_method(cfg, entry)
    datamodule = build_datamodule(cfg, method)
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
    phases = PhaseTiming()
    trainer = build_trainer(
        trainer_cfg,
        callbacks=[ValidationIdentification(names), best_cb, *last_cbs, phases, *callbacks],
        loggers=[*loggers, curves],
        default_root_dir=folder,
        progress=progress,
        label=f"{entry.name} seed {seed}",
    )
    with PeakMemory(cuda=_on_gpu(trainer_cfg)) as train_peak:
        trainer.fit(method, datamodule=datamodule, ckpt_path=str(last) if resume_step is not None else None)
    rank_zero = trainer.is_global_zero
    if on_datamodule is not None and rank_zero:
        on_datamodule(datamodule)

    best = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    if trainer_cfg.test_checkpoint == "last" or best is None or not best.is_file():
        best = last if last.is_file() else None
    best_score = best_cb.best_model_score
    metrics: dict[str, float] = {
        VAL_ID_RATE: float(best_score) if best_score is not None else float("nan"),
        "train/steps": float(trainer.global_step),
        "params": float(parameter_count(method)),
        TRAIN_PEAK: train_peak.mib,
        "train/seconds": phases.fit_seconds,  # this session's fit (a resumed cell: since the resume)
        "val/seconds": phases.validation_seconds,
    }
    # which weights the test sets see, for the reader of result.json (trainer.test_checkpoint)
    evaluated = {"test_checkpoint": "last" if best == last else "best",  # "last" too when no best was kept
                 "test_checkpoint_step": _checkpoint_step(best) if best is not None else None}
    if not evaluate_test:
        result = CellResult(entry.name, seed, metrics, None, best, resume_step, evaluated)
        if rank_zero:
            write_text_atomic(folder / RESULT_FILE, result.to_json(folder))
        return result
    return evaluate_and_write(
        cfg, entry, seed, folder, best, method=method, datamodule=datamodule, metrics=metrics,
        resumed_from_step=resume_step, run_name=run_name, method_order=method_order, progress=progress,
        projections_dir=projections_dir, projection_cases=projection_cases, extra=evaluated,
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
    if method is None:
        set_determinism(seed, cfg.trainer_for(entry))
        method = build_method(cfg, entry)
    rows, eval_info = evaluate_checkpoint(
        cfg, entry, seed, checkpoint, method=method, datamodule=datamodule, run_name=run_name or "run",
        method_order=method_order, progress=progress, train_peak_memory_mb=metrics.get(TRAIN_PEAK),
    )  # fmt: skip
    # the further test sets: the same weights and shape prior (fitted on the run's own training data); their rows
    # are dataset <name> of run <run>/<name>, as those of ``spinebench evaluate`` (a records row is one per
    # run, method, seed, case and vertebra, and a test set may hold the run's own case ids)
    set_rows: dict[str, list[dict]] = {}
    for test_set in cfg.test_sets:
        set_datamodule = build_datamodule(cfg, method, data=test_set.data)
        try:
            found, _ = evaluate_checkpoint(
                cfg, entry, seed, None, method=method, datamodule=set_datamodule,
                run_name=f"{run_name or 'run'}/{test_set.name}",
                method_order=method_order, progress=progress, train_peak_memory_mb=metrics.get(TRAIN_PEAK),
                fit_prior=False,
            )  # fmt: skip
        except InputError as exc:  # listed but not one case usable: the cell's own results still count
            warnings.warn(f"test set {test_set.name} left out of {entry.name} seed {seed}: {exc}", SkippedCaseWarning,
                          stacklevel=2)
            continue
        set_rows[test_set.name] = [{**row, "dataset": test_set.name} for row in found]
    import torch.distributed as dist

    rank_zero = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    records_path = None
    if rank_zero:
        predictions = eval_info.pop("_predictions")
        used_datamodule = eval_info.pop("_datamodule")
        records_path = write_records(folder / RECORDS_FILENAME, rows + [r for found in set_rows.values() for r in found])
        metrics.update(test_metrics(rows, label_names(cfg)))
        for name, found in set_rows.items():
            metrics.update({f"{TEST_SETS}/{name}/{key.removeprefix('test/')}": value
                            for key, value in test_metrics(found, label_names(cfg)).items()})
        metrics.update(eval_info)
        if projections_dir is not None and projection_cases > 0:
            write_projections(projections_dir, used_datamodule, predictions, projection_cases, entry.name, rows)
    result = CellResult(entry.name, seed, metrics, records_path, checkpoint, resumed_from_step, dict(extra or {}))
    if rank_zero:
        write_text_atomic(folder / RESULT_FILE, result.to_json(folder))
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
    train_peak_memory_mb: float | None = None,
    fit_prior: bool = True,
) -> tuple[list[dict], dict[str, Any]]:
    """Predict the test split with ``checkpoint``'s weights; returns (records rows on rank 0, info).

    Rows are complete on rank 0 only (other ranks get ``[]``); every test case appears exactly once. Their
    ``peak_memory_mb`` is the peak memory of the predictions alone; ``train_peak_memory_mb`` is copied into them.
    ``fit_prior=False`` keeps the method's shape prior as it is (a model evaluated on another dataset keeps the
    prior of its own training; ``method`` then comes with its weights loaded and ``checkpoint`` is None).
    """
    trainer_cfg = trainer_cfg or cfg.trainer_for(entry)
    if method is None:
        set_determinism(seed, trainer_cfg)
        method = build_method(cfg, entry)
    if datamodule is None:
        datamodule = build_datamodule(cfg, method)
    prepare_for_test(datamodule)
    if fit_prior:
        method.fit_shape_prior(datamodule.train_centroids_vox())
    if checkpoint is not None:
        load_weights(method, checkpoint, shared=True)
    timing = PredictTiming()
    trainer = build_trainer(trainer_cfg, callbacks=[timing], progress=progress, for_eval=True)
    with PeakMemory(cuda=_on_gpu(trainer_cfg)) as predict_peak:
        outputs = trainer.predict(method, datamodule=datamodule) or []
    local = []
    for out, seconds in zip(outputs, timing.seconds):
        for case_id, pred in zip(out["case_id"], out["predictions"]):
            local.append((str(case_id), pred, seconds / max(1, len(out["predictions"]))))
    gathered = _gather(local)
    if trainer.global_rank != 0:
        return [], {}
    peak_mb = predict_peak.mib
    params = parameter_count(method)
    names = label_names(cfg)
    rows: list[dict] = []
    predictions: dict[str, Any] = {}
    seen: set[str] = set()

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
            dataset=info.dataset, split="test", patient=_patient(info), metadata=info.conditions,
            method_order=method_order, seconds_per_case=seconds, params=float(params),
            train_peak_memory_mb=_finite_or_none(train_peak_memory_mb), peak_memory_mb=_finite_or_none(peak_mb),
        )  # fmt: skip
    n_cases = len(seen)
    total_s = sum(s for _, _, s in gathered)
    info = {
        "test/cases": float(n_cases),
        "test/seconds_per_case": total_s / n_cases if n_cases else math.nan,
        "peak_memory_mb": peak_mb,
        "torch_threads": float(torch.get_num_threads()),
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


def _on_gpu(trainer_cfg: TrainerConfig) -> bool:
    return trainer_cfg.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# --- datamodule glue (the datamodule's per-case accessors) ----------------------------------------
def prepare_for_test(datamodule) -> None:
    datamodule.prepare_data()
    datamodule.setup("test")


def _patient(info) -> str | None:
    patient = info.metadata.get("patient") or info.metadata.get("patient_id")
    return str(patient) if patient else None

"""Running training units (``benchmark.schedule``): one training, then every member cell evaluated on it.

``run_unit`` is the whole job of one unit and runs in any process: the runner calls it in-process (one
process, DDP) or in a pool of spawned worker processes (``execution.processes``). A worker writes only its own
cells' folders and the cell's MLflow child run (Lightning's ``MLFlowLogger``: the training curves); the runner
logs the cells' results and artifacts when a unit comes back.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from spinebench.benchmark.builders import (
    build_datamodule, build_method, load_weights, quiet_lightning, read_checkpoint, set_determinism,
)
from spinebench.benchmark.cell import TRAIN_PEAK, evaluate_and_write, prepare_for_test, train_and_evaluate_cell
from spinebench.benchmark.layout import CellResult, cell_complete, cell_dir
from spinebench.benchmark.config import ExperimentConfig
from spinebench.benchmark.schedule import TrainingUnit
from spinebench.datamodules.atomic import atomic_path


@dataclass(frozen=True)
class UnitContext:
    """What a unit needs besides the config: where to write, and where to log (picklable)."""

    out_dir: Path
    run_name: str
    method_order: dict[str, int]
    run_ids: dict[str, str | None]  # cell key "<method>/seed<k>" -> MLflow child run id (None: not tracked)
    tracking_uri: str | None = None
    experiment: str | None = None
    progress: bool = True
    processes: int = 1  # processes of this run side by side: they share the free cores (benchmark.threads)


def cell_key(method: str, seed: int) -> str:
    return f"{method}/seed{seed}"


def run_unit(cfg: ExperimentConfig, unit: TrainingUnit, ctx: UnitContext) -> list[CellResult]:
    """Train ``unit.trainer`` (or keep its complete cell), then evaluate every other member on its checkpoint."""
    seed, first = unit.seed, unit.trainer
    out_dir = Path(ctx.out_dir)
    captured: list = []

    def projections(name: str) -> Path:
        return out_dir / "projections" / name / f"seed{seed}"

    folder = cell_dir(out_dir, first, seed)
    if cell_complete(folder):
        trained = CellResult.read(folder)
    else:
        run_id = ctx.run_ids.get(cell_key(first.name, seed))
        loggers = []
        if run_id is not None and ctx.tracking_uri:
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(MLFlowLogger(experiment_name=ctx.experiment, tracking_uri=ctx.tracking_uri, run_id=run_id))
        trained = train_and_evaluate_cell(
            cfg, first, seed, folder, loggers=loggers, run_name=ctx.run_name, progress=ctx.progress,
            projections_dir=projections(first.name), projection_cases=cfg.output.projection_cases,
            method_order=ctx.method_order[first.name], on_datamodule=captured.append, processes=ctx.processes,
        )  # fmt: skip
    results = [trained]
    for member in unit.members[1:]:
        member_folder = cell_dir(out_dir, member, seed)
        if cell_complete(member_folder):
            results.append(CellResult.read(member_folder))
            continue
        set_determinism(seed, cfg.trainer_for(member), ctx.processes)
        method = build_method(cfg, member)
        datamodule = captured[0] if captured else build_datamodule(cfg, method)
        checkpoint = write_member_checkpoint(method, datamodule, trained.best_checkpoint, member_folder,
                                             cell_key(first.name, seed))
        shared = {k: trained.metrics[k] for k in ("train/steps", "train/seconds", "val/seconds", "params", TRAIN_PEAK) if k in trained.metrics}
        results.append(evaluate_and_write(
            cfg, member, seed, member_folder, checkpoint, method=method,
            datamodule=datamodule, metrics=shared, run_name=ctx.run_name,
            method_order=ctx.method_order[member.name], progress=ctx.progress,
            projections_dir=projections(member.name), projection_cases=cfg.output.projection_cases,
            extra={"trained_in": cell_key(first.name, seed),
                   **{k: v for k, v in trained.extra.items() if k.startswith("test_checkpoint")}},
        ))  # fmt: skip
    return results


def write_member_checkpoint(method, datamodule, source: Path, folder: Path, trained_in: str) -> Path:
    """``<folder>/checkpoints/best.ckpt`` of a cell that shares ``trained_in``'s training: that training's weights
    with this cell's own fitted buffers (message-passing kernels, shape dictionary) and hyperparameters, so the
    checkpoint is self-contained for ``spinebench predict``. Returns its path."""
    prepare_for_test(datamodule)
    method.fit_shape_prior(datamodule.train_centroids_vox())
    load_weights(method, source, shared=True)
    checkpoint = read_checkpoint(source)
    checkpoint["state_dict"] = method.state_dict()
    checkpoint["hyper_parameters"] = dict(method.hparams)
    checkpoint["trained_in"] = trained_in
    path = Path(folder) / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def _worker_init(parent: int) -> None:
    quiet_lightning()
    _exit_with_parent(parent)


def _exit_with_parent(parent: int, interval_s: float = 0.5) -> None:
    """End this worker as soon as the run that spawned it is gone (``kill -9`` of ``spinebench run``): an orphan
    would go on training and writing into the run folder, beside the ``--resume`` that continues the same cells.
    Its cell keeps the last checkpoint written (writes are atomic), so the resumed run continues from there."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="spinebench-parent-watch", daemon=True).start()


def run_units_parallel(
    cfg: ExperimentConfig,
    units: list[TrainingUnit],
    ctx: UnitContext,
    processes: int,
    on_start: Callable[[TrainingUnit], None] | None = None,
) -> Iterator[tuple[TrainingUnit, list[CellResult]]]:
    """Run ``units`` in ``processes`` spawned workers, at most ``processes`` at a time, in list order; yields
    each unit with its results as it finishes. A failing unit re-raises its error here (the others finish)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch/OpenMP threads
    pending = list(units)
    running: dict = {}
    with ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_worker_init,
                             initargs=(os.getpid(),)) as pool:
        while pending or running:
            while pending and len(running) < processes:
                unit = pending.pop(0)
                if on_start is not None:
                    on_start(unit)
                running[pool.submit(run_unit, cfg, unit, ctx)] = unit
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                unit = running.pop(future)
                yield unit, future.result()

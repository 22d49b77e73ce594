"""``spinebench run``: train and evaluate every (method, seed) cell of an experiment, then build the leaderboard.

Output folder::

    config.yaml            the fully resolved experiment
    manifest.json          versions, git revision, config hash, case ids per split, seeds, machine
    records.csv            per-case, per-vertebra records of every completed cell (the leaderboard's input)
    cells/<method>/seed<k>/
        checkpoints/best.ckpt, last.ckpt
        records.csv        this cell's records (never rewritten once the cell is complete)
        projections/       a few test cases' projections for the leaderboard figures
        result.json        metrics of the cell; written last, it marks the cell complete
    leaderboard/           tables, plots and the HTML page
    mlflow_run.json        the run's MLflow parent run id (the store is shared: ``benchmark.tracking``)

A completed cell is never recomputed on ``--resume``; an interrupted one restarts from its ``last.ckpt``.
Under DDP every rank runs this loop; only rank 0 writes files and talks to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from spinebench.benchmark.builders import build_method, load_weights
from spinebench.benchmark.callbacks import duration
from spinebench.benchmark.cell import TEST_SETS
from spinebench.benchmark.config import ConfigError, ExperimentConfig, TrainerConfig
from spinebench.benchmark.config_files import load_experiment
from spinebench.benchmark.console_tables import build_leaderboard
from spinebench.benchmark.layout import RECORDS_FILENAME, RESULT_FILE, CellResult, cell_complete, cell_dir
from spinebench.benchmark.manifest import build_manifest, write_manifest
from spinebench.benchmark.results import write_run_records
from spinebench.benchmark.schedule import TrainingUnit, plan_units, process_count
from spinebench.benchmark.threads import choose_threads
from spinebench.benchmark.tracking import (
    Tracker,
    check_reachable,
    default_tracking_uri,
    restore_default_uri,
    source_tags,
)
from spinebench.benchmark.units import UnitContext, cell_key, run_unit, run_units_parallel
from spinebench.datamodules.atomic import ensure_folder, write_text_atomic
from spinebench.datamodules.datamodule import VertebraDataModule
from spinebench.datamodules.errors import InputError
from spinebench.leaderboard.curves import draw_curves

RUN_DIR_ENV = "SPINEBENCH_RUN_DIR"  # lets re-launched DDP ranks find the folder rank 0 resolved


# --- ranks ------------------------------------------------------------------------------------------
def global_rank(trainer_cfg: TrainerConfig | None = None) -> int:
    """This process's rank from the launcher's environment (torchrun/SLURM/Lightning), before any Trainer."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ and ("SLURM_PROCID" != var or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
            return int(os.environ[var])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    devices = trainer_cfg.devices if trainer_cfg is not None else 1
    return node * devices + local


# --- folders ------------------------------------------------------------------------------------------
def resolve_out_dir(cfg: ExperimentConfig, out: str | None, resume: str | None) -> Path:
    if RUN_DIR_ENV in os.environ and global_rank(cfg.trainer) != 0:  # a DDP rank re-launched by rank 0
        return Path(os.environ[RUN_DIR_ENV])
    if resume:
        return Path(resume)
    if out:
        return Path(out)
    if cfg.output.dir:
        return Path(cfg.output.dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{stamp}"


def load_for_run(
    config: str | None, sets: Sequence[str], resume: str | None, methods: Sequence[str] | None = None
) -> ExperimentConfig:
    """The experiment of a new run (``methods``: only these of its methods), or the stored one of ``--resume DIR``
    (only ``tracking.*`` may change)."""
    if not resume:
        return load_experiment(config or "default", sets, only_methods=methods)
    if methods is not None:
        raise ConfigError("--resume continues the stored experiment; leave out --methods")
    folder = Path(resume)
    stored = folder / "config.yaml"
    if not stored.is_file():
        raise ConfigError(f"--resume {folder}: no config.yaml there (not a spinebench run folder)")
    bad = [s for s in sets if not s.partition("=")[0].strip().startswith(("tracking.", "execution."))]
    if bad:
        raise ConfigError(
            f"--resume continues the stored experiment; --set {bad[0]} is not allowed (only tracking.* and execution.*)"
        )
    if config:
        raise ConfigError("--resume continues the stored experiment; leave out --config")
    return load_experiment(stored, sets)


# --- the run ------------------------------------------------------------------------------------------
def run_benchmark(
    cfg: ExperimentConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    console=None,
) -> Path:
    """Run every cell of ``cfg`` into ``out_dir``; returns the folder. Rank 0 builds the leaderboard."""
    from rich.console import Console

    out_dir = Path(out_dir)
    uri_before = os.environ.get("MLFLOW_TRACKING_URI")
    rank = global_rank(cfg.trainer)
    console = console or Console(stderr=False)
    is_zero = rank == 0
    uri = tracking_uri or cfg.tracking.tracking_uri or default_tracking_uri()
    tracking_on = cfg.tracking.enabled or tracking_uri is not None  # --tracking-uri asks for tracking
    if is_zero and tracking_on:
        check_reachable(uri)  # an unreachable server fails before anything is written or trained
    os.environ[RUN_DIR_ENV] = str(out_dir.resolve())
    if is_zero:
        case_ids = checked_case_ids(cfg)  # the data sources are validated before anything is written
        test_set_ids = checked_test_set_ids(cfg)
        _prepare_out_dir(cfg, out_dir, resume)
        if not (out_dir / "manifest.json").is_file():
            write_manifest(out_dir / "manifest.json", build_manifest(cfg, case_ids, test_sets=test_set_ids))

    experiment = cfg.tracking.experiment or cfg.name
    tracker = Tracker(uri, experiment, out_dir, enabled=tracking_on and is_zero)
    params = cfg.to_dict()
    tags = run_tags(out_dir) if tracker.enabled else {}
    tracker.start(run_name=out_dir.resolve().name, params={k: params[k] for k in ("data", "seeds", "trainer")} | {
        "methods": list(params["methods"]), "config_hash": cfg.config_hash()}, tags=tags)

    units = plan_units(cfg)
    n_cells = len(cfg.cells())
    processes = process_count(cfg, len(units))
    order = [m.name for m in cfg.methods]
    run_ids = _start_child_runs(tracker, cfg, units, out_dir, tags)
    ctx = UnitContext(out_dir, out_dir.name, {name: order.index(name) for name in order}, run_ids,
                      tracker.uri if tracker.enabled else None, experiment, progress=processes == 1,
                      processes=processes)
    numbers = {(m.name, s): i for i, (m, s) in enumerate(cfg.cells(), start=1)}
    started: dict[int, float] = {}
    results: list[CellResult] = []

    def announce(unit: TrainingUnit) -> None:
        started[id(unit)] = time.monotonic()
        if not is_zero:
            return
        for member in unit.members:
            folder = cell_dir(out_dir, member, unit.seed)
            how = " (complete, kept)" if cell_complete(folder) else ""
            if member is not unit.trainer and not how:
                how = f" (evaluated on the training of {unit.trainer.name})"
            console.print(f"[bold]cell {numbers[(member.name, unit.seed)]}/{n_cells}[/bold]: {member.name} "
                          f"seed {unit.seed}{how}")

    run_t0, done_units = time.monotonic(), []

    def finished(unit: TrainingUnit, unit_results: list[CellResult]) -> None:
        results.extend(unit_results)
        done_units.append(time.monotonic() - started[id(unit)])
        if not is_zero:
            return
        _log_unit(tracker, cfg, run_ids, unit, unit_results, out_dir)
        metrics = unit_results[0].metrics
        rates = [f"test Id.Rate {100 * metrics.get('test/id_rate', float('nan')):.1f} %"] + [
            f"{t.name} {100 * metrics.get(f'{TEST_SETS}/{t.name}/id_rate', float('nan')):.1f} %" for t in cfg.test_sets]
        left = len(units) - len(done_units)
        # the trainings still to run, at the mean time of those done, shared among the processes
        eta = f", about {duration(sum(done_units) / len(done_units) * left / processes)} left" if left else ""
        console.print(f"  {unit.trainer.name} seed {unit.seed} done in {duration(done_units[-1])} ({'; '.join(rates)})"
                      f"; {len(done_units)}/{len(units)} trainings in "
                      f"{duration(time.monotonic() - run_t0)}{eta}")

    status = "FAILED"
    try:
        if is_zero and processes > 1:
            threads = choose_threads(cfg.trainer.num_threads, processes)
            console.print(f"{len(units)} trainings for {n_cells} cells in {processes} parallel processes, "
                          f"{threads} torch thread{'s' if threads > 1 else ''} each")
        if processes > 1:
            for data in (cfg.data, *(t.data for t in cfg.test_sets)):
                VertebraDataModule(data).prepare_data()  # fill the cache once, before the workers read it
            for unit, unit_results in run_units_parallel(cfg, units, ctx, processes, on_start=announce):
                finished(unit, unit_results)
        else:
            for unit in units:
                announce(unit)
                finished(unit, run_unit(cfg, unit, ctx))
        if is_zero:
            write_run_records(out_dir, cfg)
            curves = draw_curves(out_dir, [(u.seed, [m.name for m in u.members]) for u in units])
            if curves is not None:
                console.print(f"learning curves: {curves}")
            board = build_leaderboard(out_dir, console=console)
            tracker.log_artifacts(tracker.parent_run_id, [p for p in (out_dir / RECORDS_FILENAME, out_dir / "config.yaml",
                                                                        out_dir / "manifest.json", board, curves) if p])
            tracker.log_metrics(tracker.parent_run_id, summary_metrics(results))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(tracker.parent_run_id, status)
        os.environ.pop(RUN_DIR_ENV, None)
        restore_default_uri(uri_before)
    return out_dir


def run_tags(out_dir: Path) -> dict[str, str]:
    """The MLflow tags of a run's parent and child runs: source, git commit, config and split hashes (from the
    run's manifest), and the run folder."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    return source_tags(manifest) | {"spinebench.run_dir": str(out_dir.resolve())}


def _start_child_runs(tracker, cfg: ExperimentConfig, units: list[TrainingUnit], out_dir: Path,
                      tags: dict[str, str]) -> dict[str, str | None]:
    """The MLflow child run of every incomplete cell (reused on resume), created before any training starts."""
    run_ids: dict[str, str | None] = {}
    for unit in units:
        for member in unit.members:
            folder = cell_dir(out_dir, member, unit.seed)
            if cell_complete(folder):
                continue
            key = cell_key(member.name, unit.seed)
            run_ids[key] = tracker.start_cell(folder, key, tags | {"spinebench.method": member.name}, {
                "method": member.name, "seed": unit.seed,
                "method_config": dataclasses.asdict(cfg.method_config(member)),
                "trainer": dataclasses.asdict(cfg.trainer_for(member)),
                "trained_in": cell_key(unit.trainer.name, unit.seed)})  # fmt: skip
    return run_ids


def _log_unit(tracker, cfg: ExperimentConfig, run_ids: dict[str, str | None], unit: TrainingUnit,
              results: list[CellResult], out_dir: Path) -> None:
    """A finished unit's metrics and files into its cells' child runs, and each cell's tested checkpoint as an
    MLflow model (the trainer's run also gets the checkpoint file)."""
    for member, result in zip(unit.members, results, strict=True):
        run_id = run_ids.get(cell_key(member.name, unit.seed))
        if run_id is None:
            continue
        folder = cell_dir(out_dir, member, unit.seed)
        tracker.log_metrics(run_id, result.metrics)
        tracker.log_artifacts(run_id, [p for p in (result.records_path, folder / RESULT_FILE) if p])
        if member is unit.trainer and result.best_checkpoint:
            tracker.log_artifacts(run_id, [result.best_checkpoint])
        if result.best_checkpoint and cfg.tracking.log_model:
            log_cell_model(tracker, run_id, cfg, member, result, out_dir)
        tracker.end(run_id)


def listed_case_ids(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Case ids per split as the data source lists them (cheap: nothing is read or generated)."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for record in VertebraDataModule(cfg.data).records():
        out.setdefault(record.split, []).append(record.case_id)
    return out


def checked_case_ids(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """``listed_case_ids``, refusing a split that training or testing needs and the source leaves empty."""
    ids = listed_case_ids(cfg)
    for split in ("train", "test"):
        if not ids.get(split):
            counts = ", ".join(f"{k} {len(v)}" for k, v in ids.items())
            raise ConfigError(f"data: the {cfg.data.source} source lists no {split} case ({counts}); "
                              f"check the data.{cfg.data.source} section (root, split lists, case counts)")
    return ids


def checked_test_set_ids(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """The test case ids of each further test set (``test_sets``), refusing one that lists none or whose name is a
    dataset of the run's own data (the records' ``dataset`` column tells them apart)."""
    if not cfg.test_sets:
        return {}
    own = {r.dataset for r in VertebraDataModule(cfg.data).records()}
    out: dict[str, list[str]] = {}
    for test_set in cfg.test_sets:
        where = f"test_sets.{test_set.name}"
        if test_set.name in own:
            raise ConfigError(f"{where}: the run's own data has a dataset of that name; rename the test set")
        try:
            records = VertebraDataModule(test_set.data).records()
        except ConfigError:
            raise
        except InputError as exc:  # a source names its options data.<source>.<option>; here they are the set's
            text = str(exc).replace(f"data.{test_set.data.source}.", f"{where}.{test_set.data.source}.")
            raise ConfigError(f"{where}: {text}") from None
        out[test_set.name] = [r.case_id for r in records if r.split == "test"]
        if not out[test_set.name]:
            splits = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
            raise ConfigError(f"{where}: the {test_set.data.source} source lists no test case ({splits}); a test "
                              "set is its source's test split (a folder of CTs: test_fraction: 1.0)")
    return out


def check_out_dir(cfg: ExperimentConfig, out_dir: Path, resume: bool) -> None:
    """Refuse an output folder that already holds another run, or a resume of a different experiment."""
    stored = out_dir / "config.yaml"
    if resume:
        old = load_experiment(stored, check_devices=False)
        if old.config_hash() != cfg.config_hash():
            raise ConfigError(f"--resume {out_dir}: the experiment differs from the stored config.yaml")
    elif stored.exists() or (out_dir / "cells").exists():
        raise ConfigError(f"--out {out_dir}: already holds a run; continue it with --resume {out_dir} or pick another --out")


def _prepare_out_dir(cfg: ExperimentConfig, out_dir: Path, resume: bool) -> None:
    check_out_dir(cfg, out_dir, resume)
    ensure_folder(out_dir)
    write_text_atomic(out_dir / "config.yaml", cfg.to_yaml())


def log_cell_model(tracker, run_id: str | None, cfg: ExperimentConfig, member, result: CellResult,
                   out_dir: Path) -> None:
    """The cell's tested checkpoint, loaded into its method, as the MLflow model of its child run, with the run's
    config and the cell's result beside it."""
    if not tracker.enabled or run_id is None:
        return
    folder = cell_dir(out_dir, member, result.seed)
    model = build_method(cfg, member)
    load_weights(model, result.best_checkpoint)
    model.eval()
    metadata = {"method": member.name, "seed": result.seed, "config_hash": cfg.config_hash(),
                "label_set": cfg.data.label_set, "preprocess": dataclasses.asdict(cfg.data.preprocess_params),
                "input": "predict_scan((1, 1, D, H, W) CT preprocessed as `preprocess`) -> VolumePrediction"}
    tracker.log_model(run_id, model, metadata=metadata, files=[out_dir / "config.yaml", folder / RESULT_FILE])


# the figures of a cell that the parent run summarises, per method (mean over the method's seeds)
SUMMARY_KEYS = ("test/id_rate", "test/mean_mm", "test/median_mm", "test/map", "test/cervical/id_rate",
                "test/thoracic/id_rate", "test/lumbar/id_rate", "test/sacral/id_rate")


def summary_metrics(results: list[CellResult]) -> dict[str, float]:
    """``<method>/<key>``: the mean over the method's seeds of each of ``SUMMARY_KEYS`` (the child runs hold every
    figure of every cell), and ``<method>/seeds``."""
    by_method: dict[str, list[CellResult]] = {}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    out: dict[str, float] = {}
    for method, cells in by_method.items():
        out[f"{method}/seeds"] = float(len(cells))
        for key in SUMMARY_KEYS:
            values = [c.metrics[key] for c in cells if key in c.metrics]
            if values:
                out[f"{method}/{key}"] = sum(values) / len(values)
    return out



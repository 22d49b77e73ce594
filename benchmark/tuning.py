"""Optuna studies over a ``spinebench run`` experiment: storage, worker loop, pruning, MLflow and outputs.

A tuning file is a run experiment plus a ``tune`` section (see ``configs/tune_di2in.yaml``). Every trial samples
the search space, applies the values as experiment overrides and trains one (method, seed) cell through the
runner; its value is the best epoch's validation metric (``val/id_rate`` by default).

Parallel workers. ``n_trials`` is the study's total, not a per-worker count: a worker holds a study-wide lock
(``StudyLock``) while it counts the non-failed trials and creates the next one, so any number of workers on one
storage end with exactly ``n_trials`` trials. Failed trials do not count (they are retried). With an RDB
storage, Optuna's heartbeat marks the RUNNING trials of a killed worker FAIL; with a journal file, a worker marks
FAIL the RUNNING trials of dead processes on its own host.

DDP. A trial whose trainer runs several processes (``devices`` > 1 or ``num_nodes`` > 1) runs in a child
process, ``python -m spinebench.benchmark.tuning_trial TRIAL.json``, so that Lightning's launcher re-runs that command
(with the trial id) for the other ranks instead of the whole study. Every rank attaches to the same trial; Optuna's
``PyTorchLightningPruningCallback`` reports only on global rank 0 and broadcasts its prune decision, so all ranks
stop at the same epoch; rank 0 then writes the outcome for the study process. This needs an RDB storage.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from spinebench.benchmark import tuning_trial
from spinebench.benchmark.config import TRAINER_KEYS
from spinebench.benchmark.config_files import apply_sets, load_experiment, read_raw
from spinebench.benchmark.manifest import git_revision
from spinebench.benchmark.search_space import SearchSpace, apply_overrides, parse_search_space
from spinebench.benchmark.tracking import default_tracking_uri, restore_default_uri, source_tags
from spinebench.benchmark.tuning_outputs import BASELINE_ATTR, baseline_trial, write_outputs
from spinebench.benchmark.tuning_storage import (
    WORKER_ATTR, StudyLock, check_storage_url, default_storage, fail_dead_local_trials, is_rdb_url, open_storage,
)
from spinebench.benchmark.tuning_study import (
    DEFAULT_METRIC, TuneError, TuneSettings, counted_trials, load_study, make_pruner, make_sampler, trial_sampler,
)
from spinebench.benchmark.tuning_trial import StudyTracker, cell_of, is_distributed
from spinebench.datamodules.atomic import ensure_folder
from spinebench.datamodules.errors import InputError

_MAX_CONSECUTIVE_FAILURES = 3


class TrialsFailingError(RuntimeError):
    """Several trials in a row failed: the worker stops instead of burning the budget."""


# A cell trainer: (experiment mapping, trial, trial folder, mlflow child run id or None) -> objective value.
CellTrainer = Callable[[dict, optuna.trial.Trial, Path, "str | None"], float]


def run_workers_loop(
    settings: TuneSettings,
    study: optuna.Study,
    lock: StudyLock,
    experiment: Mapping[str, Any],
    space: SearchSpace,
    train_cell: CellTrainer,
    tracker: Any = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run trials until the study holds ``n_trials`` non-failed trials or ``timeout_s`` has passed.

    Returns the number of trials this worker ran. Each trial: sample -> overrides -> ``train_cell``.
    """
    started = time.monotonic()
    ran, failures = 0, 0
    worker = f"{socket.gethostname()}:{os.getpid()}"
    while settings.timeout_s is None or time.monotonic() - started < settings.timeout_s:
        lock.acquire()
        state: dict[str, Any] = {"released": False, "number": None, "user_error": None}

        def objective(trial: optuna.Trial) -> float:
            trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker)
            lock.release()  # the trial exists now (RUNNING): other workers count it
            state.update(released=True, number=trial.number)
            try:
                return _run_trial(trial, settings, experiment, space, train_cell, tracker)
            except InputError as exc:
                state["user_error"] = exc
                raise

        try:
            _fail_dead_trials(study, settings)
            if len(counted_trials(study)) >= settings.n_trials:
                break
            study.sampler = trial_sampler(settings.sampler, len(study.get_trials(deepcopy=False)))  # lock held
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        finally:
            if not state["released"]:
                lock.release()
        if state["user_error"] is not None:
            raise state["user_error"]
        ran += 1
        mine = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, state["number"])) if state["number"] is not None else None
        _log_trial(mine, study, settings, log)
        failures = failures + 1 if mine is not None and mine.state == TrialState.FAIL else 0
        if failures >= _MAX_CONSECUTIVE_FAILURES:
            reason = mine.user_attrs.get("error", "see the log above") if mine else ""
            raise TrialsFailingError(f"{failures} trials in a row failed; last error: {reason}")
    return ran


def _fail_dead_trials(study: optuna.Study, settings: TuneSettings) -> None:
    """RUNNING trials of killed workers -> FAIL: at once when their process on this host is gone (any storage),
    by heartbeat after its grace period for workers on other hosts (RDB storages)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_dead_local_trials(study)


def _run_trial(trial, settings, experiment, space, train_cell, tracker) -> float:
    overrides = space.sample(trial)
    trial.set_user_attr("overrides", overrides)
    trial_dir = settings.out_dir / "trials" / settings.study_name / f"{trial.number:04d}"
    run_id = tracker.start_trial(trial, overrides) if tracker is not None else None
    try:
        value = float(train_cell(apply_overrides(experiment, overrides), trial, trial_dir, run_id))
        if not math.isfinite(value):
            raise RuntimeError(f"objective {settings.metric} is {value}")
    except optuna.TrialPruned:
        if tracker is not None:
            tracker.end_trial(run_id, trial, "PRUNED", None)
        raise
    except InputError:
        if tracker is not None:
            tracker.end_trial(run_id, trial, "FAIL", None)
        raise  # a user error fails every trial: abort the worker
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
        if tracker is not None:
            tracker.end_trial(run_id, trial, "FAIL", None)
        raise
    if tracker is not None:
        tracker.end_trial(run_id, trial, "COMPLETE", value)
    return value


def _log_trial(trial, study: optuna.Study, settings: TuneSettings, log: Callable[[str], None]) -> None:
    if trial is None:
        return
    done = len(counted_trials(study))
    value = "" if trial.value is None else f" {settings.metric}={trial.value:.4f}"
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        value = f" at epoch {step} ({settings.metric}={trial.intermediate_values[step]:.4f})"
    try:
        best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = ""
    error = f": {trial.user_attrs['error']}" if trial.state == TrialState.FAIL and "error" in trial.user_attrs else ""
    log(f"trial {trial.number} [{done}/{settings.n_trials}] {trial.state.name}{value}{error}{best}")


# --- start-up: the tuning file -> validated settings ---------------------------------------------------------

TUNE_KEYS = ("study", "n_trials", "timeout_s", "storage", "out_dir", "objective", "pruner", "sampler", "space",
             "baseline")
_NOT_HYPERPARAMETERS = ("accelerator", "devices", "num_nodes", "strategy")


@dataclass(frozen=True)
class TuneJob:
    settings: TuneSettings
    experiment: dict  # the raw experiment (``tune`` section removed, ``--set`` applied)
    space: SearchSpace
    cfg: Any  # the resolved base experiment (benchmark.config.ExperimentConfig)
    distributed: bool
    baseline: dict[str, Any] | None = None  # the experiment's own point of the space, tried first (tune.baseline)


def prepare_tuning(
    config: str | Path, sets: Sequence[str] = (), *, n_trials: int | None = None, timeout_s: float | None = None,
    storage: str | None = None, study: str | None = None, out: str | Path | None = None,
    tracking_uri: str | None = None,
) -> TuneJob:
    """Read and validate everything (experiment, search space, objective, pruner, storage) before any training."""
    raw = apply_sets(read_raw(config), sets)
    tune = raw.pop("tune", None)
    if not isinstance(tune, Mapping) or "space" not in tune:
        raise TuneError(f"{config}: no 'tune' section with a 'space' (see configs/tune_di2in.yaml)")
    unknown = sorted(set(tune) - set(TUNE_KEYS))
    if unknown:
        raise TuneError(f"tune.{unknown[0]}: unknown key; valid keys: {', '.join(TUNE_KEYS)}")
    cfg = load_experiment(raw)
    # the methods as loaded (renamed options under their new names), so the space's values land beside them
    raw["methods"] = {m.name: {"overrides": dict(m.overrides), "trainer": dict(m.trainer)} for m in cfg.methods}
    entry, _ = cell_of(cfg)
    space = parse_search_space(tune["space"], methods=[m.name for m in cfg.methods], trainer_keys=TRAINER_KEYS)
    for p in space.params:
        if p.path[0] == "trainer" and p.path[-1] in _NOT_HYPERPARAMETERS:
            raise TuneError(
                f"tune.space.trainer.{p.path[-1]}: a device setting, not a hyperparameter; set it in trainer")
    _check_space_values(raw, space, load_experiment)

    objective = tune.get("objective") or {}
    if not isinstance(objective, Mapping) or set(objective) - {"metric", "direction"}:
        raise TuneError(f"tune.objective: expected {{metric: NAME, direction: maximize|minimize}}, got {objective!r}")
    metric = str(objective.get("metric", DEFAULT_METRIC))
    direction = objective.get("direction", "maximize" if metric == DEFAULT_METRIC else None)
    if direction not in ("maximize", "minimize"):
        raise TuneError(f"tune.objective.direction: give maximize or minimize for metric {metric!r}, got {direction!r}")
    make_pruner(tune.get("pruner"))  # validated now, built again when the study opens
    make_sampler(tune.get("sampler"))

    study_name = str(study or tune.get("study") or raw.get("name") or Path(config).stem)
    out_dir = Path(out or tune.get("out_dir") or Path("runs") / "tune" / study_name)
    n = n_trials if n_trials is not None else tune.get("n_trials", 20)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TuneError(f"--n-trials / tune.n_trials: expected a positive integer, got {n!r}")
    timeout = timeout_s if timeout_s is not None else tune.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise TuneError(f"--timeout / tune.timeout_s: expected a positive number of seconds, got {timeout!r}")
    storage_url = str(storage or tune.get("storage") or default_storage(out_dir))
    trainer_cfg = cfg.trainer_for(entry)
    distributed = is_distributed(trainer_cfg)
    if distributed and trainer_cfg.num_nodes > 1:
        raise TuneError("trainer.num_nodes: a trial runs on one machine (devices=N); for several machines run one "
                        "`spinebench tune` worker per machine against one --storage")
    if distributed and not is_rdb_url(storage_url):
        raise TuneError(f"--storage {storage_url}: DDP trials need an RDB storage (sqlite:///, postgresql://); "
                        "Optuna's Lightning pruning callback does not support journal files under DDP")
    uri = tracking_uri or cfg.tracking.tracking_uri or default_tracking_uri()
    settings = TuneSettings(study_name, storage_url, out_dir, n, None if timeout is None else float(timeout), metric,
                            direction, dict(tune.get("pruner") or {}), dict(tune.get("sampler") or {}), uri)
    return TuneJob(settings, raw, space, cfg, distributed, _baseline(tune, space, cfg))


def _baseline(tune: Mapping[str, Any], space: SearchSpace, cfg: Any) -> dict[str, Any] | None:
    """``tune.baseline`` (default true): the experiment's own values of the searched parameters, evaluated as the
    study's first trial (a numeric value outside its range moved to the nearest end); None when off, or when a
    categorical parameter's own value is not among its choices."""
    enabled = tune.get("baseline", True)
    if not isinstance(enabled, bool):
        raise TuneError(f"tune.baseline: expected true or false, got {enabled!r}")
    if not enabled:
        return None
    values = space.values_in(cfg.to_dict())
    for p in space.params:
        if p.type == "categorical" and values[p.name] not in p.choices:
            return None
        if p.type != "categorical":  # e.g. weight_decay 0 under a log range: its lowest value (Optuna's samplers
            values[p.name] = min(max(values[p.name], p.low), p.high)  # cannot use a point outside the range)
    return values


def _check_space_values(raw: Mapping[str, Any], space: SearchSpace, load_experiment) -> None:
    """Every bound and choice must pass the experiment's own validation (types, method checks)."""
    numeric = [p for p in space.params if p.type != "categorical"]
    trials = [{p.key: p.low for p in numeric}, {p.key: p.high for p in numeric}]
    trials += [{p.key: c} for p in space.params if p.type == "categorical" for c in p.choices]
    for overrides in trials:
        if overrides:
            load_experiment(apply_overrides(raw, overrides))


def study_tags(cfg) -> dict[str, str]:
    """The study's MLflow tags: source, git commit, the tuned experiment's config hash."""
    return source_tags({"command": sys.argv, "git": git_revision(), "config_hash": cfg.config_hash()})


def run_tuning(job: TuneJob, log: Callable[[str], None] = print) -> tuple[optuna.Study, dict[str, Path]]:
    """Open (or continue) the study, run this worker's trials, write the outputs; returns the study and files."""

    uri_before = os.environ.get("MLFLOW_TRACKING_URI")
    settings = job.settings
    check_storage_url(settings.storage)  # a bad URL leaves no folder behind
    ensure_folder(settings.out_dir)
    lock = StudyLock(settings.storage, settings.study_name)
    experiment = job.cfg.tracking.experiment or job.cfg.name
    tracker = StudyTracker(settings.tracking_uri, experiment, settings.out_dir, enabled=job.cfg.tracking.enabled)
    with lock.held():  # first workers to arrive create the database, the study and the MLflow parent run in turn
        study = load_study(settings, open_storage(settings.storage))
        _check_same_space(study, job.space, settings)
        if job.baseline is not None and not study.get_trials(deepcopy=False):  # a new study: the baseline first
            study.enqueue_trial(job.baseline, user_attrs={BASELINE_ATTR: True})
        tracker.start_study(study, {"study": settings.study_name, "metric": settings.metric,
                                    "direction": settings.direction, "n_trials": settings.n_trials,
                                    "pruner": dict(settings.pruner), "sampler": dict(settings.sampler),
                                    "space": {p.name: _describe(p) for p in job.space.params}},
                            tags=study_tags(job.cfg))
        _fail_dead_trials(study, settings)  # before counting: a killed worker's trial does not count
    done = len(counted_trials(study))
    log(f"study {settings.study_name!r} ({_redact(settings.storage)}): {done}/{settings.n_trials} trials so far, "
        f"objective {settings.metric} ({settings.direction})")
    status = "FAILED"
    try:
        train = make_cell_trainer(settings, tracker, job.distributed, experiment)
        run_workers_loop(settings, study, lock, job.experiment, job.space, train, tracker, log)
        outputs = write_outputs(study, settings.out_dir, settings.metric, settings.direction, settings.storage,
                                settings.study_name, job.experiment, job.space)
        base = baseline_trial(study)
        if base is not None and base.state == TrialState.COMPLETE:
            log(f"baseline (the tuning file's own values): trial {base.number}, {settings.metric}={base.value:.4f}; "
                f"best: trial {study.best_trial.number}, {study.best_value:.4f}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker.enabled and tracker.parent_run_id:
            if status == "FINISHED":
                _log_study_summary(tracker, study, settings, outputs)
            tracker.end(tracker.parent_run_id, status)
        restore_default_uri(uri_before)
    return study, outputs


def _check_same_space(study: optuna.Study, space: SearchSpace, settings: TuneSettings) -> None:
    names = set(space.names)
    for trial in study.get_trials(deepcopy=False):
        extra = sorted(set(trial.params) - names)
        if extra:
            raise TuneError(f"--study {settings.study_name}: its trials tuned {', '.join(extra)}, which this search "
                            "space lacks; pick another --study name for a different space")


def _describe(p) -> str:
    if p.type == "categorical":
        return f"categorical{list(p.choices)}"
    return f"{p.type}[{p.low}, {p.high}]" + (" log" if p.log else "") + (f" step {p.step}" if p.step else "")


def _redact(url: str) -> str:
    """Hide a password in ``scheme://user:password@host``."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, rest = tail.rpartition("@")
        return f"{head}://{cred.split(':')[0]}:***@{rest}"
    return url


def _log_study_summary(tracker, study: optuna.Study, settings: TuneSettings, outputs: dict[str, Path]) -> None:
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    metrics = {f"trials/{k}": float(v) for k, v in counts.items()}
    if counts["complete"]:
        metrics["best/value"] = study.best_value
        metrics["best/trial"] = float(study.best_trial.number)
    tracker.log_metrics(tracker.parent_run_id, metrics)
    tracker.log_artifacts(tracker.parent_run_id, list(outputs.values()))
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):  # child runs of killed workers
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and tracker.client.get_run(run_id).info.status == "RUNNING":
            tracker.client.set_tag(run_id, "optuna.state", "FAIL")
            tracker.end(run_id, "FAILED")


# --- how a trial trains ---------------------------------------------------------------------------------------


def make_cell_trainer(settings: TuneSettings, tracker: Any, distributed: bool, tracking_experiment: str) -> CellTrainer:
    """Train a trial's cell in this process, or (DDP) in a child process that Lightning re-launches per rank."""
    uri = tracker.uri if tracker is not None and tracker.enabled else None

    def in_process(experiment: dict, trial: optuna.Trial, trial_dir: Path, run_id: str | None) -> float:
        return tuning_trial.train_cell(experiment, trial, trial_dir, metric=settings.metric,
                                       direction=settings.direction, tracking_uri=uri,
                                       tracking_experiment=tracking_experiment, run_id=run_id)

    def in_child(experiment: dict, trial: optuna.Trial, trial_dir: Path, run_id: str | None) -> float:
        job = {"storage": settings.storage, "study_name": settings.study_name, "trial_id": trial._trial_id,
               "experiment": experiment, "metric": settings.metric, "direction": settings.direction,
               "pruner": dict(settings.pruner),
               "tracking_uri": uri, "tracking_experiment": tracking_experiment, "run_id": run_id,
               "trial_dir": str(trial_dir)}
        return tuning_trial.run_trial_in_subprocess(job, trial_dir)

    return in_child if distributed else in_process

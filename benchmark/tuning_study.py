"""The study itself: its settings, Optuna's sampler and pruner built from the tuning file, opening the study.

``benchmark.tuning`` runs the workers over it; ``benchmark.tuning_trial`` (a DDP trial in its own process) builds
the pruner here too. The storage behind a study is ``benchmark.tuning_storage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from spinebench.benchmark.tuning_storage import open_storage
from spinebench.datamodules.errors import InputError

DEFAULT_METRIC = "val/id_rate"
PRUNERS = ("median", "hyperband", "threshold", "none")
SAMPLERS = ("tpe", "random")


class TuneError(InputError):
    """A tuning setting (storage, objective, pruner, sampler, budget) that cannot be used."""


@dataclass(frozen=True)
class TuneSettings:
    study_name: str
    storage: str  # RDB URL (contains "://") or a journal file path
    out_dir: Path
    n_trials: int
    timeout_s: float | None
    metric: str
    direction: str  # "maximize" | "minimize"
    pruner: Mapping[str, Any]
    sampler: Mapping[str, Any]
    tracking_uri: str


def make_pruner(raw: Mapping[str, Any] | None, where: str = "tune.pruner") -> optuna.pruners.BasePruner:
    """``{type: median|hyperband|threshold|none, ...}``; the other keys are the pruner's own arguments."""
    raw = dict(raw or {"type": "median"})
    kind = raw.pop("type", "median")
    classes = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    if kind not in classes:
        raise TuneError(f"{where}.type: unknown pruner {kind!r}; valid pruners: {', '.join(PRUNERS)}")
    try:
        return classes[kind](**raw)
    except (TypeError, ValueError) as exc:
        raise TuneError(f"{where}: bad arguments for the {kind} pruner: {exc}") from None


def make_sampler(raw: Mapping[str, Any] | None, where: str = "tune.sampler") -> optuna.samplers.BaseSampler:
    raw = dict(raw or {"type": "tpe"})
    kind = raw.pop("type", "tpe")
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if kind not in classes:
        raise TuneError(f"{where}.type: unknown sampler {kind!r}; valid samplers: {', '.join(SAMPLERS)}")
    try:
        return classes[kind](**raw)
    except (TypeError, ValueError) as exc:
        raise TuneError(f"{where}: bad arguments for the {kind} sampler: {exc}") from None


def trial_sampler(raw: Mapping[str, Any] | None, index: int) -> optuna.samplers.BaseSampler:
    """The sampler for the study's trial number ``index``: a seeded sampler gets ``seed + index``, so parallel
    workers (each creating a different trial number) draw different points, and one worker stays reproducible."""
    raw = dict(raw or {"type": "tpe"})
    if raw.get("seed") is not None:
        raw["seed"] = int(raw["seed"]) + int(index)
    return make_sampler(raw)


def load_study(settings: TuneSettings, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the study or attach to it (``load_if_exists``); refuses one created with the other direction."""
    study = optuna.create_study(
        storage=storage or open_storage(settings.storage), study_name=settings.study_name,
        direction=settings.direction, load_if_exists=True,
        sampler=make_sampler(settings.sampler), pruner=make_pruner(settings.pruner),
    )
    if study.direction.name.lower() != settings.direction:
        raise TuneError(
            f"study {settings.study_name!r} in {settings.storage} was created to {study.direction.name.lower()}, "
            f"not {settings.direction}; pick another --study name"
        )
    return study


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``n_trials``: all but FAIL and WAITING (enqueued, e.g. the baseline, not run
    yet: the next worker runs it)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state not in (TrialState.FAIL, TrialState.WAITING)]

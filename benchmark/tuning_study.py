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


_PRUNER_CLASSES = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
                   "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
_SAMPLER_CLASSES = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


def make_pruner(raw: Mapping[str, Any] | None, where: str = "tune.pruner") -> optuna.pruners.BasePruner:
    """``{type: median|hyperband|threshold|none, ...}``; the other keys are the pruner's own arguments."""
    return _build(raw, "median", _PRUNER_CLASSES, "pruner", where)


def make_sampler(raw: Mapping[str, Any] | None, where: str = "tune.sampler") -> optuna.samplers.BaseSampler:
    """``{type: tpe|random, ...}``; the other keys are the sampler's own arguments (e.g. ``seed``)."""
    return _build(raw, "tpe", _SAMPLER_CLASSES, "sampler", where)


def _build(raw: Mapping[str, Any] | None, default: str, classes: Mapping[str, type], what: str, where: str):
    raw = dict(raw or {"type": default})
    kind = raw.pop("type", default)
    if kind not in classes:
        raise TuneError(f"{where}.type: unknown {what} {kind!r}; valid {what}s: {', '.join(classes)}")
    try:
        return classes[kind](**raw)
    except (TypeError, ValueError) as exc:
        raise TuneError(f"{where}: bad arguments for the {kind} {what}: {exc}") from None


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

"""The YAML search space of a tuning study: what Optuna samples and where each value lands in the experiment.

A space has two parts, both optional::

    space:
      methods:
        di2in:                                   # a method of the experiment
          learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
          base_width: {type: categorical, choices: [8, 16]}
      trainer:
        max_epochs: {type: int, low: 2, high: 8, step: 2}

A method parameter lands on ``methods.<name>.overrides.<key>``, a trainer parameter on ``trainer.<key>`` of
the experiment. Optuna names them ``<method>.<key>`` and ``trainer.<key>`` (short names in plots and MLflow).
Everything is checked once, at start-up, against the method's config dataclass and the runner's trainer
keys; a bad entry raises ``SearchSpaceError`` naming its key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from spinebench.benchmark.config_files import set_dotted
from spinebench.datamodules.errors import InputError
from spinebench.methods.registry import MethodRegistryError, get_method_spec, rename_options

_NUMERIC_KEYS = {"type", "low", "high", "log", "step"}
_CATEGORICAL_KEYS = {"type", "choices"}
PARAM_TYPES = ("float", "int", "categorical")


class SearchSpaceError(InputError):
    """A search-space entry that cannot be sampled or does not map onto a known option."""


@dataclass(frozen=True)
class Param:
    """One sampled parameter: its Optuna name, where its value goes, and its distribution."""

    name: str  # Optuna's name, e.g. "di2in.learning_rate" or "trainer.max_epochs"
    path: tuple[str, ...]  # key path in the experiment, e.g. ("methods", "di2in", "overrides", "learning_rate")
    type: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def key(self) -> str:
        """The dotted experiment key (the ``--set`` spelling)."""
        return ".".join(self.path)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample every parameter on ``trial``; returns experiment overrides ``{dotted key: value}``."""
        return {p.key: p.suggest(trial) for p in self.params}

    def values_in(self, resolved: Mapping[str, Any]) -> dict[str, Any]:
        """Each parameter's value in a resolved experiment (``ExperimentConfig.to_dict()``), by Optuna name: the
        point of the space that the experiment itself is (its values may lie outside the searched ranges)."""
        out = {}
        for p in self.params:
            node: Any = resolved
            for part in p.path:
                node = node[part]
            out[p.name] = node
        return out

    def overrides_from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Map a finished trial's ``params`` (Optuna names) back onto experiment overrides."""
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(by_name))
        if unknown:
            raise SearchSpaceError(
                f"trial parameter(s) {', '.join(unknown)} are not in the search space "
                f"({', '.join(by_name) or 'empty'}); the study was created with a different space"
            )
        return {by_name[n].key: v for n, v in params.items()}


def apply_overrides(experiment: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the raw experiment mapping with ``{dotted key: value}`` set (missing mappings created)."""
    out = _deep_copy(experiment)
    for key, value in overrides.items():
        blocked = set_dotted(out, key, value)
        if blocked is not None:
            part = blocked.rsplit(".", 1)[-1]
            raise SearchSpaceError(f"{key}: {part!r} is not a mapping in the experiment, cannot set {key!r}")
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def parse_search_space(
    raw: Any,
    *,
    methods: Iterable[str],
    trainer_keys: Iterable[str],
    where: str = "tune.space",
) -> SearchSpace:
    """Validate the raw ``space`` mapping and build the ``SearchSpace``.

    ``methods``: the experiment's method names (the space may only tune those); ``trainer_keys``: the
    runner's valid trainer keys. Method parameters are checked against the method's config dataclass.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise SearchSpaceError(f"{where}: expected a mapping with 'methods' and/or 'trainer', got {raw!r}")
    unknown = sorted(set(raw) - {"methods", "trainer"})
    if unknown:
        raise SearchSpaceError(f"{where}.{unknown[0]}: unknown section; valid sections: methods, trainer")
    experiment_methods = list(methods)
    params: list[Param] = []

    raw_methods = raw.get("methods", {})
    if not isinstance(raw_methods, Mapping) or ("methods" in raw and not raw_methods):
        raise SearchSpaceError(f"{where}.methods: expected a mapping method -> parameters, got {raw_methods!r}")
    for method, entries in raw_methods.items():
        key = f"{where}.methods.{method}"
        try:
            spec = get_method_spec(str(method))
        except MethodRegistryError as exc:
            raise SearchSpaceError(f"{key}: {exc}") from None
        if method not in experiment_methods:
            raise SearchSpaceError(
                f"{key}: method {method!r} is not in the experiment's methods ({', '.join(experiment_methods)})"
            )
        fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
        hints = typing.get_type_hints(spec.config_cls)
        try:
            named = rename_options(spec.config_cls, dict(_entries(entries, key)), f"{key}.")
        except MethodRegistryError as exc:
            raise SearchSpaceError(str(exc)) from None
        for name, entry in named.items():
            if name not in fields:
                raise SearchSpaceError(
                    f"{key}.{name}: unknown parameter for method {method!r}; valid parameters: {', '.join(fields)}"
                )
            param = _parse_param(entry, f"{key}.{name}", f"{method}.{name}", ("methods", method, "overrides", name))
            _check_matches_field(param, hints.get(name, Any), f"{key}.{name}")
            params.append(param)

    valid_trainer = list(trainer_keys)
    for name, entry in _entries(raw["trainer"], f"{where}.trainer") if "trainer" in raw else ():
        if name not in valid_trainer:
            raise SearchSpaceError(
                f"{where}.trainer.{name}: unknown trainer parameter; valid parameters: {', '.join(valid_trainer)}"
            )
        params.append(_parse_param(entry, f"{where}.trainer.{name}", f"trainer.{name}", ("trainer", name)))

    if not params:
        raise SearchSpaceError(f"{where}: declares no parameters to tune")
    return SearchSpace(tuple(params))


def _entries(entries: Any, key: str) -> list[tuple[str, Any]]:
    if not isinstance(entries, Mapping) or not entries:
        raise SearchSpaceError(f"{key}: expected a non-empty mapping parameter -> distribution, got {entries!r}")
    return [(str(k), v) for k, v in entries.items()]


def _parse_param(entry: Any, key: str, name: str, path: tuple[str, ...]) -> Param:
    if not isinstance(entry, Mapping):
        raise SearchSpaceError(f"{key}: expected a mapping like {{type: float, low: 0.1, high: 1.0}}, got {entry!r}")
    kind = entry.get("type")
    if kind not in PARAM_TYPES:
        raise SearchSpaceError(f"{key}.type: expected one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    allowed = _CATEGORICAL_KEYS if kind == "categorical" else _NUMERIC_KEYS
    extra = sorted(set(entry) - allowed)
    if extra:
        valid = ", ".join(sorted(allowed))
        raise SearchSpaceError(f"{key}.{extra[0]}: unknown key for a {kind} parameter; valid keys: {valid}")
    if kind == "categorical":
        return Param(name, path, kind, choices=_parse_choices(entry.get("choices"), key))

    low, high = _number(entry, "low", key, kind), _number(entry, "high", key, kind)
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{key}.log: expected true or false, got {log!r}")
    step = entry.get("step")
    if low > high:
        raise SearchSpaceError(f"{key}: inverted range, low {low} > high {high}")
    if low == high:
        raise SearchSpaceError(f"{key}: empty range, low == high == {low} (use a fixed override instead)")
    if log and low <= 0:
        raise SearchSpaceError(f"{key}: log scale needs positive bounds, got low {low}")
    if step is not None:
        step = _number(entry, "step", key, kind)
        if log:
            raise SearchSpaceError(f"{key}: 'step' and 'log: true' cannot be combined")
        if step <= 0:
            raise SearchSpaceError(f"{key}.step: must be positive, got {step}")
        if step > high - low:
            raise SearchSpaceError(f"{key}.step: {step} is larger than the range {low}..{high}")
    return Param(name, path, kind, low=low, high=high, log=log, step=step)


def _number(entry: Mapping[str, Any], field: str, key: str, kind: str) -> float | int:
    if field not in entry:
        raise SearchSpaceError(f"{key}: a {kind} parameter needs '{field}'")
    value = entry[field]
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchSpaceError(f"{key}.{field}: expected a finite number, got {entry[field]!r}")
    if kind == "int":
        if float(value) != int(value):
            raise SearchSpaceError(f"{key}.{field}: an int parameter needs integer bounds, got {value!r}")
        return int(value)
    return float(value)


def _parse_choices(choices: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(choices, list) or not choices:
        raise SearchSpaceError(f"{key}.choices: expected a non-empty list, got {choices!r}")
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise SearchSpaceError(f"{key}.choices: {choice!r} is not a number, string, boolean or null")
    if len({(type(c), c) for c in choices}) != len(choices):
        raise SearchSpaceError(f"{key}.choices: duplicate values in {choices!r}")
    return tuple(choices)


def _check_matches_field(param: Param, hint: Any, key: str) -> None:
    """Refuse a distribution whose values the option's type hint (int, float, bool, str, Literal, Optional) refuses."""
    values = list(param.choices) if param.type == "categorical" else [param.low, param.high]
    if param.type == "int":
        values = [int(v) for v in values]
    for value in values:
        if not _fits(value, hint):
            kind = param.type if param.type != "categorical" else "choice"
            raise SearchSpaceError(f"{key}: {kind} {value!r} does not fit the option's type {_hint_name(hint)}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return False  # tuples, mappings, dataclasses: not sampled by a search space


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")

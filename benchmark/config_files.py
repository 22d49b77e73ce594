"""Experiment files: shipped configs by name (package data), YAML reading, ``--set key=value`` overrides, and
``load_experiment``, which hands the result to ``benchmark.config.resolve`` (the schema and its validation)."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from spinebench.benchmark.config import _TOP_KEYS, ExperimentConfig, _normalize_methods, normalize_raw, resolve
from spinebench.benchmark.config_types import ConfigError
from spinebench.configs import shipped_names

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# The shipped configs: package data of ``spinebench.configs`` (the repository's ``configs/`` folder).
SHIPPED_CONFIGS = "spinebench.configs"


def load_experiment(
    config: str | Path | Mapping[str, Any] = "default",
    sets: Sequence[str] = (),
    *,
    check_devices: bool = True,
    only_methods: Sequence[str] | None = None,
) -> ExperimentConfig:
    """Read (path, shipped name or raw mapping), apply ``--set`` items, keep ``only_methods`` (``run --methods``:
    a subset of the experiment's methods, each with its own settings, in the experiment's order) and validate."""
    raw = dict(config) if isinstance(config, Mapping) else read_raw(config)
    raw = apply_sets(raw, sets)
    if only_methods is not None:
        raw["methods"] = select_methods(raw.get("methods") or {}, only_methods)
    return resolve(raw, check_devices=check_devices)


def select_methods(methods: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The entries of ``methods`` named in ``names`` (each as the experiment configures it), in the experiment's
    order; a name the experiment does not list is refused."""
    unknown = [n for n in names if n not in methods]
    if unknown:
        raise ConfigError(f"--methods {unknown[0]}: not a method of this experiment (it lists "
                          f"{', '.join(methods) or 'none'})")
    if not names:
        raise ConfigError("--methods: name at least one method")
    return {name: body for name, body in methods.items() if name in names}


def resolve_config_path(config: str | Path) -> Path | Traversable:
    """A path, or the name of a shipped config (``default``, ``ablation_di2in``...)."""
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix == "" and "/" not in str(config):
        candidate = importlib.resources.files(SHIPPED_CONFIGS) / f"{config}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {str(config)!r} not found; give a YAML path or a shipped name: "
                      f"{', '.join(shipped_names())}")


def read_raw(config: str | Path, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a YAML experiment. ``extends: BASE`` (a shipped name, or a path relative to the file)
    starts from BASE's mapping: sections merge key by key, the file's values win, lists are replaced."""
    path = resolve_config_path(config)
    if str(path) in _chain:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(_chain)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(_TOP_KEYS)}), got {type(raw).__name__}")
    raw.setdefault("name", Path(path.name).stem)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: extends: expected the name or path of another config, got {base!r}")
    beside = Path(str(path)).parent / base
    base_raw = read_raw(beside if beside.suffix and beside.is_file() else base, (*_chain, str(path)))
    return _merged(normalize_raw(base_raw), normalize_raw(raw))


def _merged(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def parse_set(item: str) -> tuple[str, Any]:
    """``"trainer.max_epochs=3"`` -> ``("trainer.max_epochs", 3)`` (the value is read as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected key=value with a dotted key, e.g. trainer.max_epochs=3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def apply_sets(raw: Mapping[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` (methods normalised) with every ``--set key=value`` applied."""
    out = normalize_raw(raw)
    for item in items:
        key, value = parse_set(item)
        parts = key.split(".")
        if parts[0] == "methods" and len(parts) == 1:
            out["methods"] = _normalize_methods(value)
            continue
        if parts[0] == "methods" and out.get("methods") is None:
            raise ConfigError(f"--set {key}: 'methods' is not a mapping")
        blocked = set_dotted(out, key, value)
        if blocked is not None:
            raise ConfigError(f"--set {key}: {blocked} is a value, not a section")
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> str | None:
    """Set ``a.b.c`` in nested dicts, creating missing sections.

    Returns None, or (setting nothing) the dotted prefix that holds a value where a section is needed.
    """
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return ".".join(parts[: i + 1])
        node = child
    node[parts[-1]] = value
    return None

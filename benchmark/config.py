"""The experiment schema: frozen dataclasses that map the YAML file one-to-one, validated before any training.

An experiment file::

    name: default
    data:            # the datamodule's DataConfig (benchmark.config_data): fields + the selected source's section
      source: phantom
      phantom: {n_train: 16, n_test: 4}
    methods:         # method name -> {overrides: {...}, trainer: {...}}; order = leaderboard order
      di2in: {overrides: {base_width: 8}}
      resml_cls: {}
    seeds: [0]
    trainer: {max_epochs: 2, devices: 1, strategy: auto, precision: 32-true, accelerator: cpu}
    tracking: {enabled: true, tracking_uri: null, experiment: null, log_model: true}
    output: {dir: null}
    test_sets:       # optional: further datasets every trained model is tested on (benchmark.config_data)
      real: {source: folder, folder: {root: /data/cts, test_fraction: 1.0}}

``methods`` may also be written as a list of names or of ``{name, overrides, trainer}`` mappings; it is
normalised to the mapping form (the form ``--set methods.di2in.overrides.base_width=16`` addresses).
``--set key=value`` takes dotted keys and YAML-typed values (reading files and applying ``--set``:
``benchmark.config_files``). Every unknown key, method, data source or device setting raises ``ConfigError`` (one
line, names the key, lists the valid ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from spinebench.benchmark.config_data import TestSet, resolve_data, resolve_test_sets
from spinebench.benchmark.config_types import ConfigError, _check_keys, _coerce, _plain, build_typed
from spinebench.datamodules.datamodule import DataConfig
from spinebench.datamodules.labels import get_label_set
from spinebench.methods.registry import (
    MethodRegistryError,
    get_method_spec,
    list_methods,
    method_config,
    rename_options,
)

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false", "fsdp")
PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
# Sections of the file besides the schema's that other commands read (``spinebench tune`` reads ``tune``).
EXTRA_SECTIONS = ("tune",)


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning Trainer budget and devices (keys as in ``lightning.Trainer``)."""

    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several devices or nodes (gloo on CPU, nccl on GPUs)
    precision: str = "32-true"
    max_epochs: int = 2
    max_steps: int = -1  # -1: no step limit
    max_time: str | None = None  # "DD:HH:MM:SS"
    limit_train_batches: float = 1.0  # fraction (float) or number of batches (int)
    limit_val_batches: float = 1.0
    val_check_interval: float = 1.0
    check_val_every_n_epoch: int = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 5
    checkpoint_every_n_steps: int | None = None  # also write last.ckpt every N steps (finer resume)
    # the weights the test sets are evaluated with: "best" = highest validation Id.Rate (best.ckpt; a tie keeps
    # the earlier one), "last" = the final weights (last.ckpt), for budgets whose schedule decays the learning
    # rate to zero, where a small validation set picks among near-equal checkpoints by noise
    test_checkpoint: Literal["best", "last"] = "best"
    deterministic: bool = True
    enable_progress_bar: bool = True
    # CPU intra-op threads of torch; None: the free cores shared among the run's processes (benchmark.threads).
    # A fixed count also fixes the order of float sums (bit-identical records between runs).
    num_threads: int | None = None


@dataclass(frozen=True)
class MethodEntry:
    """One method of the experiment: its registered name, config overrides and trainer overrides."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    trainer: Mapping[str, Any] = field(default_factory=dict)  # per-method TrainerConfig overrides


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder
    experiment: str | None = None  # default: the config's name
    log_model: bool = True  # each cell's tested checkpoint as an MLflow model (mlflow.pytorch)


@dataclass(frozen=True)
class OutputConfig:
    dir: str | None = None  # default runs/<name>-<UTC timestamp>
    projection_cases: int = 3  # test cases per cell with projection files: its best, median and worst by result


@dataclass(frozen=True)
class ExecutionConfig:
    """How the cells are scheduled; never changes a result (excluded from the config hash)."""

    # Training units run side by side in this many processes; 0 = auto: on one CPU device, the machine's cores
    # divided by ``trainer.num_threads`` (two one-thread processes on a 2-core machine), else 1 (GPU, DDP).
    processes: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: DataConfig
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...] = (0,)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    description: str = ""
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    test_sets: tuple[TestSet, ...] = ()  # further datasets each trained model is tested on (benchmark.config_data)

    def trainer_for(self, entry: MethodEntry) -> TrainerConfig:
        """The trainer settings of one method: the experiment's, with the method's overrides on top."""
        if not entry.trainer:
            return self.trainer
        return build_typed(TrainerConfig, {**dataclasses.asdict(self.trainer), **entry.trainer}, f"methods.{entry.name}.trainer")

    def method_config(self, entry: MethodEntry):
        """The method's resolved config dataclass (its ``num_vertebrae`` follows the label set)."""
        return method_config(entry.name, **_method_overrides(self, entry))

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved experiment as plain YAML-able data (every default filled in; ``test_sets`` only when
        there are any, so that the hash of an experiment without them stays what it was)."""
        out = {
            "name": self.name,
            "description": self.description,
            "data": _plain(self.data.to_dict()),
            "methods": {
                m.name: {"overrides": _plain(dataclasses.asdict(self.method_config(m))), "trainer": _plain(dict(m.trainer))}
                for m in self.methods
            },
            "seeds": list(self.seeds),
            "trainer": _plain(dataclasses.asdict(self.trainer)),
            "tracking": _plain(dataclasses.asdict(self.tracking)),
            "output": _plain(dataclasses.asdict(self.output)),
            "execution": _plain(dataclasses.asdict(self.execution)),
        }
        if self.test_sets:
            out["test_sets"] = {t.name: _plain(t.to_dict()) for t in self.test_sets}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """sha256 of what determines the results (output folder, tracking, execution and the cache folder excluded)."""
        d = self.to_dict()
        d.pop("output"), d.pop("tracking"), d.pop("execution")
        d["data"].pop("cache_dir")  # where the cache lives changes nothing of the results
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def cells(self) -> list[tuple[MethodEntry, int]]:
        """The (method, seed) cells in run order: methods outer, seeds inner."""
        return [(m, s) for m in self.methods for s in self.seeds]


TRAINER_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainerConfig))
_TOP_KEYS = ("name", "description", "data", "methods", "seeds", "trainer", "tracking", "output", "execution",
             "test_sets")


def normalize_raw(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a raw experiment with ``methods`` in the mapping form ``{name: {overrides, trainer}}``."""
    out = json.loads(json.dumps(raw, default=str))
    if "methods" in out:
        out["methods"] = _normalize_methods(out["methods"])
    return out


def _normalize_methods(methods: Any) -> dict[str, dict[str, Any]]:
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, Mapping):
        return {str(k): ({} if v is None else v) for k, v in methods.items()}
    if isinstance(methods, list):
        out: dict[str, Any] = {}
        for item in methods:
            if isinstance(item, str):
                name, body = item, {}
            elif isinstance(item, Mapping) and "name" in item:
                name, body = str(item["name"]), {k: v for k, v in item.items() if k != "name"}
            else:
                raise ConfigError(f"methods: expected a method name or {{name, overrides}}, got {item!r}")
            if name in out:
                raise ConfigError(f"methods: {name!r} is listed twice")
            out[name] = body
        return out
    raise ConfigError(f"methods: expected a mapping or list of methods, got {methods!r}")


def resolve(raw: Mapping[str, Any], *, check_devices: bool = True) -> ExperimentConfig:
    """Validate a raw experiment mapping (extra sections like ``tune`` are ignored here)."""
    raw = normalize_raw(raw)
    for section in EXTRA_SECTIONS:
        raw.pop(section, None)
    _check_keys(raw, _TOP_KEYS, "")
    if "methods" not in raw or not raw["methods"]:
        raise ConfigError(f"methods: the experiment lists no methods; registered methods: {_registered()}")
    data = resolve_data(raw.get("data") or {})
    entries = tuple(_resolve_method(name, body) for name, body in raw["methods"].items())
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: duplicate seeds in {seeds!r}")
    cfg = ExperimentConfig(
        name=_coerce(raw.get("name", "experiment"), str, "name"),
        description=_coerce(raw.get("description") or "", str, "description"),
        data=data,
        methods=entries,
        seeds=tuple(seeds),
        trainer=build_typed(TrainerConfig, raw.get("trainer") or {}, "trainer"),
        tracking=build_typed(TrackingConfig, raw.get("tracking") or {}, "tracking"),
        output=build_typed(OutputConfig, raw.get("output") or {}, "output"),
        execution=build_typed(ExecutionConfig, raw.get("execution") or {}, "execution"),
        test_sets=resolve_test_sets(raw.get("test_sets"), data),
    )
    if cfg.execution.processes < 0:
        raise ConfigError(f"execution.processes: must be >= 0 (0 = auto), got {cfg.execution.processes}")
    for entry in cfg.methods:
        trainer = cfg.trainer_for(entry)
        _check_trainer(trainer, f"methods.{entry.name}.trainer" if entry.trainer else "trainer", check_devices)
        try:
            cfg.method_config(entry)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"methods.{entry.name}.overrides: {exc}") from None
    return cfg


# --- sections -----------------------------------------------------------------------------------
def _registered() -> str:
    return ", ".join(list_methods()) or "(none)"


def _resolve_method(name: str, body: Any) -> MethodEntry:
    key = f"methods.{name}"
    try:
        spec = get_method_spec(name)
    except MethodRegistryError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not isinstance(body, Mapping):
        raise ConfigError(f"{key}: expected a mapping with 'overrides' and/or 'trainer', got {body!r}")
    _check_keys(body, ("overrides", "trainer"), key)
    overrides = body.get("overrides") or {}
    trainer = body.get("trainer") or {}
    for sub, value in (("overrides", overrides), ("trainer", trainer)):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}.{sub}: expected a mapping, got {value!r}")
    _check_keys(trainer, TRAINER_KEYS, f"{key}.trainer")
    try:
        overrides = rename_options(spec.config_cls, overrides, f"{key}.overrides.")
    except MethodRegistryError as exc:
        raise ConfigError(str(exc)) from None
    return MethodEntry(name, dict(overrides), dict(trainer))


def _method_overrides(cfg: ExperimentConfig, entry: MethodEntry) -> dict[str, Any]:
    spec = get_method_spec(entry.name)
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    valid = list(fields)
    unknown = sorted(set(entry.overrides) - set(fields))
    if unknown:
        raise ConfigError(
            f"methods.{entry.name}.overrides.{unknown[0]}: unknown option for method {entry.name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    hints = typing.get_type_hints(spec.config_cls)
    out = {k: _coerce(v, hints.get(k, Any), f"methods.{entry.name}.overrides.{k}") for k, v in entry.overrides.items()}
    k = _num_vertebrae(cfg.data)
    if k is not None and "num_vertebrae" in fields:
        if out.get("num_vertebrae", k) != k:
            raise ConfigError(
                f"methods.{entry.name}.overrides.num_vertebrae: {out['num_vertebrae']} disagrees with the label set "
                f"{getattr(cfg.data, 'label_set', '?')!r} (K={k}); leave it out"
            )
        out["num_vertebrae"] = k
    return out


def _num_vertebrae(data: Any) -> int | None:
    label_set = getattr(data, "label_set", None)
    if label_set is None:
        return None
    return len(get_label_set(label_set).names)


def _check_trainer(t: TrainerConfig, key: str, check_devices: bool) -> None:
    if t.accelerator not in ACCELERATORS:
        raise ConfigError(f"{key}.accelerator: unknown accelerator {t.accelerator!r}; valid: {', '.join(ACCELERATORS)}")
    if t.strategy not in STRATEGIES:
        raise ConfigError(f"{key}.strategy: unknown strategy {t.strategy!r}; valid: {', '.join(STRATEGIES)}")
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"{key}.precision: unknown precision {t.precision!r}; valid: {', '.join(PRECISIONS)}")
    if t.devices < 1:
        raise ConfigError(f"{key}.devices: must be a positive number of devices per node, got {t.devices}")
    if t.num_nodes < 1:
        raise ConfigError(f"{key}.num_nodes: must be >= 1, got {t.num_nodes}")
    if (t.devices > 1 or t.num_nodes > 1) and not t.strategy.startswith(("ddp", "fsdp")):
        raise ConfigError(
            f"{key}.strategy: {t.devices} device(s) x {t.num_nodes} node(s) need a distributed strategy "
            f"(ddp or fsdp), got {t.strategy!r}"
        )
    if t.max_epochs < 1 and t.max_steps < 1 and not t.max_time:
        raise ConfigError(f"{key}: set a budget: max_epochs >= 1, max_steps >= 1 or max_time")
    if t.max_time is not None:
        parts = str(t.max_time).split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"{key}.max_time: expected DD:HH:MM:SS, got {t.max_time!r}")
    if t.num_threads is not None and t.num_threads < 1:
        raise ConfigError(f"{key}.num_threads: must be >= 1 or null, got {t.num_threads}")
    if t.checkpoint_every_n_steps is not None and t.checkpoint_every_n_steps < 1:
        raise ConfigError(f"{key}.checkpoint_every_n_steps: must be >= 1 or null, got {t.checkpoint_every_n_steps}")
    if check_devices and t.accelerator in ("gpu", "cuda"):
        import torch

        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(f"{key}.accelerator: {t.accelerator!r} requested but no CUDA device is visible; use cpu")
        if t.devices > available:
            raise ConfigError(f"{key}.devices: {t.devices} requested but only {available} CUDA device(s) are visible")
    if check_devices and t.accelerator == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key}.accelerator: 'mps' requested but MPS is not available; use cpu")

"""Which cells share a training, and how many processes run the trainings side by side.

A *training unit* is one training and the cells evaluated on it. Cells of one seed whose method configs differ
only in fields the family declares inference-only (``VertebraMethod.inference_only_fields``; e.g. DI2IN's
post-hoc message passing and shape refinement) and whose trainer settings are equal form one unit: the first
of them in config order trains, and every member is evaluated on that training's best checkpoint (chosen on
the trainer cell's ``val/id_rate``). ``di2in``, ``di2in_mp`` and ``di2in_mp_sparsity`` thus train one network,
which is also the paper's ablation in its cleanest form: the same weights with and without each step.

Units are independent: each seeds every RNG and sets its thread count itself, so the records of a cell do not
depend on which process ran it or in what order (``tests/test_schedule.py`` compares parallel with serial).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from spinebench.benchmark.config import ExperimentConfig, MethodEntry
from spinebench.benchmark.threads import auto_processes
from spinebench.methods.registry import get_method_spec


@dataclass(frozen=True)
class TrainingUnit:
    seed: int
    members: tuple[MethodEntry, ...]  # members[0] trains; every member is evaluated on its checkpoint

    @property
    def trainer(self) -> MethodEntry:
        return self.members[0]


def training_key(cfg: ExperimentConfig, entry: MethodEntry) -> str:
    """What determines the trained weights of ``entry``: family class, training config fields, trainer."""
    spec = get_method_spec(entry.name)
    config = cfg.method_config(entry)
    skip = spec.module_cls.inference_only_fields(config)
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}
    trainer = dataclasses.asdict(cfg.trainer_for(entry))
    cls = f"{spec.module_cls.__module__}.{spec.module_cls.__qualname__}"
    return json.dumps({"module": cls, "config": fields, "trainer": trainer}, sort_keys=True, default=str)


def plan_units(cfg: ExperimentConfig) -> list[TrainingUnit]:
    """The run's training units, in the order of their first cell in ``cfg.cells()``."""
    groups: dict[tuple[int, str], list[MethodEntry]] = {}
    for entry, seed in cfg.cells():
        groups.setdefault((seed, training_key(cfg, entry)), []).append(entry)
    return [TrainingUnit(seed, tuple(members)) for (seed, _), members in groups.items()]


def process_count(cfg: ExperimentConfig, n_units: int) -> int:
    """Processes for the units: ``execution.processes``, or auto (see ``ExecutionConfig``)."""
    if cfg.execution.processes > 0:
        return max(1, min(cfg.execution.processes, n_units))
    trainers = [cfg.trainer_for(m) for m in cfg.methods]
    single_cpu = all(t.accelerator == "cpu" and t.devices == 1 and t.num_nodes == 1
                     and not t.strategy.startswith(("ddp", "fsdp")) for t in trainers)  # fmt: skip
    if not single_cpu:
        return 1
    fixed = [t.num_threads for t in trainers if t.num_threads]
    return auto_processes(n_units, max(fixed) if len(fixed) == len(trainers) else None)

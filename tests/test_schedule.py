"""Training units and the parallel schedule: shared trainings, and records that do not depend on the schedule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from spinebench.benchmark.config_files import load_experiment
from spinebench.benchmark.runner import run_benchmark
from spinebench.benchmark.schedule import plan_units, process_count

# the run name is the folder's; timings and memory vary
DROP = ("run", "seconds_per_case", "train_peak_memory_mb", "peak_memory_mb")
# smoke's di2in and resml_cls, plus di2in_mp with di2in's network: di2in and di2in_mp differ only in post-hoc
# message passing (one training), resml_cls is a training of its own
THREE = ["methods.di2in_mp.overrides.base_width=4", "methods.di2in_mp.overrides.depth=2", "tracking.enabled=false",
         "trainer.num_threads=1"]


def _records(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in DROP} for row in csv.DictReader(f)]


def test_post_hoc_variants_share_one_training():
    cfg = load_experiment("default", ["tracking.enabled=false"])
    units = plan_units(cfg)
    assert [[m.name for m in u.members] for u in units] == [
        ["di2in", "di2in_mp", "di2in_mp_sparsity"], ["resml_loc"], ["resml_cls"], ["resml_cls_bilstm"]]


def test_a_training_setting_splits_the_unit():
    sets = ["tracking.enabled=false", "methods=[di2in, di2in_mp, di2in_mp_sparsity]"]
    # a different loss weight changes the weights: its own training
    cfg = load_experiment("default", [*sets, "methods.di2in_mp.overrides.foreground_weight=3"])
    assert [[m.name for m in u.members] for u in plan_units(cfg)] == [["di2in", "di2in_mp_sparsity"], ["di2in_mp"]]
    # unrolled message passing is part of the trained graph
    cfg = load_experiment("default", [*sets, "methods.di2in_mp.overrides.mp_mode=unrolled"])
    assert len(plan_units(cfg)) == 2
    # a per-method trainer budget too
    cfg = load_experiment("default", [*sets, "methods.di2in_mp_sparsity.trainer.max_steps=7"])
    assert [[m.name for m in u.members] for u in plan_units(cfg)] == [["di2in", "di2in_mp"], ["di2in_mp_sparsity"]]
    # seeds are separate trainings
    cfg = load_experiment("default", [*sets, "seeds=[0, 1]"])
    assert [(u.seed, len(u.members)) for u in plan_units(cfg)] == [(0, 3), (1, 3)]


def test_process_count_follows_threads_and_devices(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cfg = load_experiment("default", ["tracking.enabled=false", "trainer.num_threads=1"])
    assert process_count(cfg, 4) == 4 and process_count(cfg, 3) == 3
    cfg = load_experiment("default", ["tracking.enabled=false", "trainer.num_threads=2"])
    assert process_count(cfg, 4) == 2
    # automatic threads: one process per free core (the load average counts the busy ones)
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 1.0, 1.0), raising=False)
    cfg = load_experiment("default", ["tracking.enabled=false", "trainer.num_threads=null"])
    assert cfg.trainer.num_threads is None and process_count(cfg, 4) == 3 and process_count(cfg, 2) == 2
    cfg = load_experiment("default", ["tracking.enabled=false", "execution.processes=1"])
    assert process_count(cfg, 4) == 1
    # one process per job is the rule on CPU; several devices (DDP) run in one process tree
    cfg = load_experiment("default", ["tracking.enabled=false", "trainer.devices=2", "trainer.strategy=ddp"])
    assert process_count(cfg, 4) == 1


def test_execution_is_not_part_of_the_config_hash():
    a = load_experiment("smoke", ["execution.processes=1"])
    b = load_experiment("smoke", ["execution.processes=2"])
    assert a.config_hash() == b.config_hash()


@pytest.mark.slow
def test_parallel_schedule_gives_the_serial_records(tmp_path):
    cache = tmp_path / "cache"
    outs = {}
    for processes in (1, 2):
        cfg = load_experiment("smoke", [*THREE, f"data.cache_dir={cache}", f"execution.processes={processes}"])
        outs[processes] = run_benchmark(cfg, tmp_path / f"p{processes}")
    serial, parallel = (_records(outs[p] / "records.csv") for p in (1, 2))
    assert serial == parallel and {r["method"] for r in serial} == {"di2in", "di2in_mp", "resml_cls"}
    # the message-passing cell was evaluated on the di2in training: no training of its own
    for out in outs.values():
        mp = json.loads((out / "cells/di2in_mp/seed0/result.json").read_text())
        base = json.loads((out / "cells/di2in/seed0/result.json").read_text())
        assert mp["extra"]["trained_in"] == "di2in/seed0" and mp["metrics"]["train/steps"] == base["metrics"]["train/steps"]
        # its training memory is that of the shared training; its inference memory is its own measurement
        assert mp["metrics"]["train_peak_memory_mb"] == base["metrics"]["train_peak_memory_mb"] > 0
        assert mp["metrics"]["peak_memory_mb"] > 0
        assert not (out / "cells/di2in_mp/seed0/checkpoints/last.ckpt").exists()  # never trained
        # its checkpoint: di2in's weights with its own message-passing kernels (self-contained for predict)
        mine = torch.load(out / "cells/di2in_mp/seed0" / mp["best_checkpoint"], weights_only=True)
        theirs = torch.load(out / "cells/di2in/seed0" / base["best_checkpoint"], weights_only=True)
        net = [k for k in theirs["state_dict"] if k.startswith("net.")]
        assert net and all(torch.equal(mine["state_dict"][k], theirs["state_dict"][k]) for k in net)
        assert any(k.startswith("mp.") for k in mine["state_dict"]) and mine["trained_in"] == "di2in/seed0"
        assert mine["hyper_parameters"]["message_passing"] and not theirs["hyper_parameters"]["message_passing"]
        assert (out / "cells/di2in/seed0/curves/metrics.csv").is_file() and (out / "curves.png").stat().st_size > 0

"""Experiment config: one-to-one YAML mapping, --set overrides, and one-line errors for every bad setting."""

from __future__ import annotations

import dataclasses

import subprocess
import sys

import pytest
import yaml

from spinebench.benchmark.config import ConfigError

from spinebench.benchmark.config_files import apply_sets, load_experiment, parse_set, resolve_config_path
from spinebench.configs import shipped_names
from spinebench.datamodules.errors import InputError

SHIPPED = [name for name in shipped_names() if not name.startswith("tune_")]


def _raw(**changes):
    raw = yaml.safe_load(resolve_config_path("smoke").read_text())
    raw.update(changes)
    return raw


# the real-data configs ship without a data root; resolving does not read it
ROOTS = {"csi2014_set2": ["data.csi2014.root=/nonexistent"], "verse2020": ["data.verse.root=/nonexistent"]}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_resolve(name):
    cfg = load_experiment(name, ROOTS.get(name, []), check_devices=False)
    assert cfg.methods and cfg.seeds
    # the resolved config is written to the run folder and must load back to the same experiment
    again = load_experiment(yaml.safe_load(cfg.to_yaml()), check_devices=False)
    assert again.config_hash() == cfg.config_hash()


def test_default_config_runs_every_registered_variant():
    from spinebench.methods.registry import list_methods

    cfg = load_experiment("default")
    assert [m.name for m in cfg.methods] == list_methods()
    assert cfg.data.source == "phantom" and cfg.trainer.accelerator == "cpu"


def test_set_overrides_are_yaml_typed():
    assert parse_set("trainer.max_epochs=3") == ("trainer.max_epochs", 3)
    assert parse_set("seeds=[0, 1]") == ("seeds", [0, 1])
    assert parse_set("tracking.enabled=false") == ("tracking.enabled", False)
    assert parse_set("data.root=/a/b=c") == ("data.root", "/a/b=c")
    cfg = load_experiment("smoke", ["trainer.max_epochs=3", "seeds=[0, 1]", "methods.di2in.overrides.sigma_vox=1.5",
                                    "data.spacing_mm=6"])
    assert cfg.trainer.max_epochs == 3 and cfg.seeds == (0, 1) and cfg.data.spacing_mm == 6
    assert cfg.method_config(cfg.methods[0]).sigma_vox == 1.5
    assert [c[1] for c in cfg.cells()] == [0, 1, 0, 1]
    # the method list can be replaced, in list form, and keeps its order
    cfg = load_experiment("smoke", ["methods=[resml_loc, di2in]"])
    assert [m.name for m in cfg.methods] == ["resml_loc", "di2in"]


def test_label_set_sets_num_vertebrae():
    cfg = load_experiment("smoke", ["data.label_set=transitional"])
    assert all(cfg.method_config(m).num_vertebrae == 28 for m in cfg.methods)
    with pytest.raises(ConfigError, match="num_vertebrae: 26 disagrees with the label set 'transitional'"):
        load_experiment("smoke", ["data.label_set=transitional", "methods.di2in.overrides.num_vertebrae=26"])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["trainer.max_epoch=3"], r"^trainer\.max_epoch: unknown key; valid keys: accelerator, devices, .*max_epochs"),
        (["bogus=1"], r"^bogus: unknown key; valid keys: name, description, data, methods"),
        (["methods=[di2in, nosuch]"], r"^methods\.nosuch: unknown method 'nosuch'; registered methods: .*di2in"),
        (["methods.di2in.overrides.widht=3"], r"^methods\.di2in\.overrides\.widht: unknown option .*valid options: "),
        (["methods.di2in.overrides.sigma_vox=abc"], r"^methods\.di2in\.overrides\.sigma_vox: expected a number"),
        (["methods.di2in.trainer.max_epoch=1"], r"^methods\.di2in\.trainer\.max_epoch: unknown key"),
        (["data.source=dicomweb"], r"^data\.source: unknown data source 'dicomweb'; valid sources: csi2014, folder, phantom, verse"),
        (["data.spacing=2"], r"^data\.spacing: unknown key; valid keys: source, label_set, .*, phantom"),
        (["data.phantom.metal=1"], r"^data\.phantom\.metal: unknown key; valid keys: n_train, n_val, n_test, seed"),
        (["data.phantom.generator.metal=1"], r"^data\.phantom\.generator\.metal: unknown key; valid keys: spacing_mm"),
        (["data.phantom.n_test=-1"], r"^data\.phantom\.n_test: must be >= 0, got -1"),
        (["data.phantom.generator.metal_rate=x"], r"^data\.phantom\.generator\.metal_rate: expected a number"),
        (["data.folder.mask_labels=itk"], r"^data\.folder\.mask_labels: unknown numbering 'itk'; valid: verse"),
        (["data.label_set=foo"], r"^data\.label_set: .*foo"),
        (["trainer.accelerator=tpu9"], r"^trainer\.accelerator: unknown accelerator 'tpu9'; valid: cpu, gpu"),
        (["trainer.strategy=horovod"], r"^trainer\.strategy: unknown strategy 'horovod'; valid: auto, ddp"),
        (["trainer.precision=8-bit"], r"^trainer\.precision: unknown precision '8-bit'; valid: 32-true"),
        (["trainer.devices=0"], r"^trainer\.devices: must be a positive number"),
        (["trainer.devices=2"], r"^trainer\.strategy: 2 device\(s\) x 1 node\(s\) need a distributed strategy"),
        (["trainer.devices=two"], r"^trainer\.devices: expected an integer, got 'two'"),
        (["trainer.max_time=1h"], r"^trainer\.max_time: expected DD:HH:MM:SS"),
        (["trainer.num_threads=0"], r"^trainer\.num_threads: must be >= 1"),
        (["trainer.test_checkpoint=middle"], r"^trainer\.test_checkpoint: 'middle' is not one of best, last"),
        (["methods.di2in.trainer.test_checkpoint=first"], r"^methods\.di2in\.trainer\.test_checkpoint: 'first' is not"),
        (["trainer.max_epochs=0", "trainer.max_steps=-1"], r"^trainer: set a budget"),
        (["seeds=[1, 1]"], r"^seeds: duplicate seeds"),
        (["seeds=abc"], r"^seeds: expected a non-empty list of integers"),
        (["tracking.uri=x"], r"^tracking\.uri: unknown key; valid keys: enabled, tracking_uri, experiment"),
        (["trainer=3"], r"^trainer: expected a mapping"),
        (["nodot"], r"^--set 'nodot': expected key=value"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_key(sets, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_experiment("smoke", sets)
    assert "\n" not in str(info.value) and isinstance(info.value, InputError)


def test_gpu_request_without_gpu_fails_before_training():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(ConfigError, match=r"^trainer\.accelerator: 'gpu' requested but no CUDA device is visible"):
        load_experiment("smoke", ["trainer.accelerator=gpu"])
    # the paper-sized GPU configs still resolve for inspection without devices
    assert load_experiment("verse2020", ["data.verse.root=/x"], check_devices=False).trainer.accelerator == "gpu"


def test_unknown_config_name_lists_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"config 'nope' not found; .*default.*smoke"):
        load_experiment("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+ is not valid YAML"):
        load_experiment(bad)


def test_apply_sets_normalises_list_form_methods():
    raw = apply_sets({"methods": ["di2in", {"name": "resml_loc", "overrides": {"pos_weight": 2.0}}]},
                     ["methods.di2in.overrides.sigma_vox=3"])
    assert raw["methods"] == {"di2in": {"overrides": {"sigma_vox": 3}}, "resml_loc": {"overrides": {"pos_weight": 2.0}}}


@pytest.mark.slow
def test_cli_reports_config_error_in_one_line_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "spinebench", "run", "--config", "smoke", "--set", "trainer.max_epoch=3",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "spinebench run: error: trainer.max_epoch: unknown key; valid keys: " + ", ".join(
            __import__("spinebench.benchmark.config", fromlist=["TRAINER_KEYS"]).TRAINER_KEYS)
    ]
    assert not (tmp_path / "run").exists()  # nothing written before validation passed


def test_renamed_options_keep_working_with_a_one_line_message(caplog):
    """DI2IN's ``lr`` and ``window_overlap`` are ``learning_rate`` and ``tile_overlap`` (the residual network's
    names); the old names still work in YAML, search spaces and the Python API, with a deprecation line each."""
    import logging

    from spinebench.benchmark.search_space import parse_search_space
    from spinebench.methods import method_config

    with caplog.at_level(logging.WARNING, logger="spinebench"):
        cfg = load_experiment("smoke", ["methods.di2in.overrides.lr=0.005",
                                        "methods.di2in.overrides.window_overlap=0.5"])
    (entry,) = [m for m in cfg.methods if m.name == "di2in"]
    assert entry.overrides == {"base_width": 4, "depth": 2, "learning_rate": 0.005, "tile_overlap": 0.5}
    resolved = cfg.method_config(entry)
    assert resolved.learning_rate == 0.005 and resolved.tile_overlap == 0.5
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["spinebench: methods.di2in.overrides.lr is deprecated, renamed to learning_rate (the old name "
                     "goes in spinebench 0.2)", "spinebench: methods.di2in.overrides.window_overlap is deprecated, "
                     "renamed to tile_overlap (the old name goes in spinebench 0.2)"]
    assert "window_overlap" not in cfg.to_yaml()  # the resolved config is written with the new names
    with pytest.raises(ConfigError, match=r"^methods\.di2in\.overrides\.lr: renamed to learning_rate, which is given"):
        load_experiment("smoke", ["methods.di2in.overrides.lr=0.005", "methods.di2in.overrides.learning_rate=0.001"])
    assert method_config("di2in", lr=0.002).learning_rate == 0.002
    space = parse_search_space({"methods": {"di2in": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}},
                               methods=["di2in"], trainer_keys=[])
    assert space.names == ["di2in.learning_rate"]


OLD_DATA = """
name: old
data:
  source: phantom
  spacing_mm: 8.0
  phantom_train: 200
  phantom_val: 5
  phantom_test: 30
  phantom_seed: 2
  root: /ignored/by/the/phantom
  phantom: {body_max_width_mm: 200.0, fov_vertebrae: [6, 10]}
methods: [di2in]
"""


def test_flat_data_keys_of_0_1_keep_working_with_a_one_line_message(caplog, tmp_path):
    """The ``data:`` section of spinebench 0.1 (flat source keys, generator settings under ``data.phantom``)
    resolves to the same data as the sectioned form, one deprecation line per old key."""
    import logging

    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD_DATA)
    new.write_text(OLD_DATA.split("data:")[0] + """data:
  source: phantom
  spacing_mm: 8.0
  phantom: {n_train: 200, n_val: 5, n_test: 30, seed: 2, generator: {body_max_width_mm: 200.0, fov_vertebrae: [6, 10]}}
  folder: {root: /ignored/by/the/phantom}
methods: [di2in]
""")
    with caplog.at_level(logging.WARNING, logger="spinebench"):
        cfg_old = load_experiment(old)
    lines = [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spinebench"):
        cfg_new = load_experiment(new)
    assert not caplog.records
    assert cfg_old.data == cfg_new.data and cfg_old.config_hash() == cfg_new.config_hash()
    assert cfg_new.to_dict()["data"]["phantom"] == {"n_train": 200, "n_val": 5, "n_test": 30, "seed": 2,
                                                    "generator": {"body_max_width_mm": 200.0,
                                                                  "fov_vertebrae": [6, 10]}}
    assert "folder" not in cfg_new.to_dict()["data"]  # only the selected source's section is kept
    assert len(lines) == 7 and all(line.endswith("(the old name goes in spinebench 0.2)") for line in lines)
    assert "spinebench: data.phantom_seed is deprecated, renamed to data.phantom.seed" in lines[3]
    assert "data.root is deprecated, renamed to data.csi2014.root, data.folder.root, data.verse.root (source " \
        "'phantom' has no such option and ignores it)" in lines[4]
    assert "data.phantom.fov_vertebrae is deprecated, renamed to data.phantom.generator.fov_vertebrae" in lines[6]
    with pytest.raises(ConfigError, match=r"^data\.phantom_train: also given as data\.phantom\.n_train"):
        load_experiment("smoke", ["data.phantom_train=3"])
    # an old key of the selected file source goes to that source's section
    cfg = load_experiment("csi2014_set2", ["data.root=/x", "data.split_seed=4"], check_devices=False)
    assert cfg.data.options.root == "/x" and cfg.data.options.split_seed == 4


def test_extends_starts_from_another_config(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: default\ndata: {phantom: {n_test: 3}}\nmethods: {di2in: {trainer: {max_steps: 7}}}\n"
                     "seeds: [4, 5]\n")
    cfg, base = load_experiment(child), load_experiment("default")
    assert cfg.name == "child" and cfg.seeds == (4, 5)  # its own name; lists are replaced
    assert cfg.data.options.n_test == 3 and cfg.data.options.n_train == base.data.options.n_train  # merged
    assert cfg.data.options.generator == base.data.options.generator and cfg.data.spacing_mm == 8.0
    (di2in,) = [m for m in cfg.methods if m.name == "di2in"]
    assert di2in.trainer == {"max_steps": 7, "check_val_every_n_epoch": 1} and di2in.overrides == [m for m in base.methods if m.name == "di2in"][0].overrides
    assert [m.name for m in cfg.methods] == [m.name for m in base.methods]
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: extends itself through"):
        load_experiment(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ConfigError, match="config 'nowhere' not found"):
        load_experiment(tmp_path / "c.yaml")


def test_test_sets_resolve_with_the_runs_data_and_their_own_source():
    cfg = load_experiment("sim2real", ["test_sets.real.folder.root=/cts", "test_sets.more.source=phantom",
                                       "test_sets.more.phantom.seed=9"])
    real, more = cfg.test_sets
    assert (real.name, real.data.source, real.data.options.root, real.data.options.test_fraction) == \
        ("real", "folder", "/cts", 1.0)
    assert more.data.options.seed == 9 and more.data.options.n_test == 4  # the phantom source's defaults
    assert real.data.spacing_mm == cfg.data.spacing_mm == 4.0 and real.data.label_set == cfg.data.label_set
    assert cfg.data.options.generator["centroids"] == "mask"  # as the real truths are: masks' centres of mass
    trainers = {m.name: m.trainer for m in cfg.methods}
    assert trainers["di2in"] == {"max_steps": 3000, "check_val_every_n_epoch": 1}  # the default's, budget doubled
    assert trainers["resml_cls_bilstm"] == {"max_steps": 4000, "check_val_every_n_epoch": 2, "gradient_clip_val": 1.0}
    d = cfg.to_dict()
    assert d["test_sets"]["real"] == {"source": "folder", "folder": {**dataclasses.asdict(real.data.options)}}
    assert load_experiment(yaml.safe_load(cfg.to_yaml())).config_hash() == cfg.config_hash()
    assert "test_sets" not in load_experiment("default").to_dict()  # configs without test sets hash as before


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["test_sets.test.source=phantom"], r"^test_sets\.test: a test set's name is its dataset name"),
        (["test_sets.x=3"], r"^test_sets\.x: expected \{source: SOURCE"),
        (["test_sets.x.source=pacs"], r"^test_sets\.x\.source: unknown data source 'pacs'"),
        (["test_sets.x.source=phantom", "test_sets.x.folder.root=/a"], r"^test_sets\.x\.folder: unknown key"),
        (["test_sets.x.source=phantom", "test_sets.x.phantom.n_tset=2"], r"^test_sets\.x\.phantom\.n_tset: unknown"),
    ],
)
def test_bad_test_sets_fail_with_one_line_naming_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment("smoke", sets)

"""``spinebench run --print-config`` and ``--dry-run``: the resolved config, every check and the plan, nothing
written."""

from __future__ import annotations

import re

import yaml

from spinebench.benchmark.cli import main
from spinebench.benchmark.config_files import load_experiment


def test_print_config_is_the_resolved_config_and_runs_again(tmp_path, capsys):
    assert main(["run", "--config", "smoke", "--set", "seeds=[3]", "--print-config", "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["seeds"] == [3]
    (tmp_path / "c.yaml").write_text(text)
    again = load_experiment(tmp_path / "c.yaml")
    assert again.config_hash() == load_experiment("smoke", ["seeds=[3]"]).config_hash()
    assert not (tmp_path / "o").exists()


def test_dry_run_shows_cells_data_and_memory_and_writes_nothing(tmp_path, capsys):
    sets = ["--set", "methods=[di2in, di2in_mp, resml_cls]", "--set", "execution.processes=1",
            "--set", "methods.resml_cls.trainer.test_checkpoint=last"]
    assert main(["run", "--config", "smoke", *sets, "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "nothing was written" in out and "3 in 2 trainings" in out
    assert "di2in_mp seed 0: evaluated on the training of di2in" in out
    trains = r"seed 0: trains \(2 epochs, [\d.]+ M parameters; tested with its"
    assert re.search(rf"di2in {trains} best-validation weights\)", out)  # the default: trainer.test_checkpoint best
    assert re.search(rf"resml_cls {trains} final weights\)", out)
    assert "data: phantom at 8 mm, 4 train, 2 val, 2 test cases" in out and "model state up to" in out
    assert "tracking: off" in out  # the smoke config does not track
    assert not (tmp_path / "o").exists()


def test_dry_run_names_the_shared_store_and_the_experiment(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", "smoke", "--set", "tracking.enabled=true", "--dry-run"]) == 0
    assert f"tracking: MLflow sqlite:///{tmp_path.resolve() / 'mlflow.db'}, experiment 'smoke'" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # the store is not created by a dry run


def test_dry_run_refuses_what_the_run_would_refuse(tmp_path, capfd):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "config.yaml").write_text("name: other\n")
    code = main(["run", "--config", "smoke", "--dry-run", "--out", str(tmp_path / "o")])
    assert code == 2 and "already holds a run" in capfd.readouterr().err
    code = main(["run", "--config", "smoke", "--set", "data.phantom.n_test=0", "--dry-run", "--out", str(tmp_path / "p")])
    assert code == 2 and "lists no test case" in capfd.readouterr().err and not (tmp_path / "p").exists()


def test_dry_run_lists_the_further_test_sets(tmp_path, capfd):
    code = main(["run", "--config", "smoke", "--set", "test_sets.other.source=phantom", "--set",
                 "test_sets.other.phantom.n_test=3", "--dry-run", "--out", str(tmp_path / "o")])
    out = capfd.readouterr().out
    assert code == 0 and "test set other: phantom, 3 test cases" in out and not (tmp_path / "o").exists()


def test_methods_option_keeps_the_named_methods_with_their_settings(tmp_path, capfd):
    """``run --methods a,b`` runs a subset of an experiment's methods, each as the experiment configures it (its
    overrides and trainer settings, inherited ones included), in the experiment's order; unknown names exit 2."""
    full = load_experiment("sim2real")
    assert main(["run", "--config", "sim2real", "--methods", "resml_cls, di2in", "--print-config"]) == 0
    text = capfd.readouterr().out
    assert list(yaml.safe_load(text)["methods"]) == ["di2in", "resml_cls"]
    (tmp_path / "c.yaml").write_text(text)
    subset = load_experiment("sim2real", only_methods=["resml_cls", "di2in"])
    assert load_experiment(tmp_path / "c.yaml").config_hash() == subset.config_hash()
    for entry in subset.methods:
        kept = next(m for m in full.methods if m.name == entry.name)
        assert entry == kept and entry.trainer["max_steps"] in (3000, 4000)  # sim2real's own budgets
    assert subset.data == full.data and subset.seeds == full.seeds
    code = main(["run", "--config", "sim2real", "--methods", "di2in,foo", "--print-config"])
    assert code == 2 and "--methods foo: not a method of this experiment" in capfd.readouterr().err
    code = main(["run", "--resume", str(tmp_path), "--methods", "di2in"])
    assert code == 2 and "leave out --methods" in capfd.readouterr().err

"""The cache folder follows SPINEBENCH_CACHE, else the XDG cache folder; where it lives changes no result."""

from __future__ import annotations

from pathlib import Path

from spinebench.benchmark.config_files import load_experiment
from spinebench.datamodules.cache_root import cache_root
from spinebench.datamodules.datamodule import DataConfig


def test_cache_root_follows_spinebench_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SPINEBENCH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == Path.home() / ".cache" / "spinebench"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "spinebench"
    assert DataConfig().cache_path == tmp_path / "xdg" / "spinebench" / "preprocessed"
    monkeypatch.setenv("SPINEBENCH_CACHE", str(tmp_path / "mine"))
    assert DataConfig().cache_path == tmp_path / "mine" / "preprocessed"
    assert DataConfig(cache_dir=str(tmp_path / "set")).cache_path == tmp_path / "set"  # a config's own wins


def test_the_cache_folder_is_not_part_of_the_experiment():
    a = load_experiment("smoke", ["data.cache_dir=/tmp/a"])
    b = load_experiment("smoke", ["data.cache_dir=/tmp/b"])
    assert a.config_hash() == b.config_hash() == load_experiment("smoke").config_hash()
    assert a.config_hash() != load_experiment("smoke", ["data.spacing_mm=4.0"]).config_hash()

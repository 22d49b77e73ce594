"""Every registered data source (built-in or added through the entry-point group ``spinebench.sources``) passes
``check_source`` on its example dataset, and the contract check itself catches a broken source."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from spinebench.datamodules.datamodule import DataConfig, VertebraDataModule
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.sources import CaseRecord, DataSource, get_source, list_sources, register_source
from spinebench.datamodules.sources.base import SOURCES
from spinebench.datamodules.sources.contract import check_source
from spinebench.datamodules.sources.folder import FolderSource
from tests.plugin_fixtures import pip_install_plugin, readme_example

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list_sources())
def test_registered_source_keeps_the_contract(name, tmp_path):
    check_source(get_source(name), tmp_path)


@pytest.fixture
def clean_sources():
    saved = SOURCES.snapshot()
    yield
    SOURCES.restore(saved)


def test_contract_catches_a_source_whose_records_lie(clean_sources, tmp_path):
    @register_source("swapped_split")
    class Swapped(FolderSource):  # the folder source, with a split name of its own
        def case_records(self):
            return [CaseRecord(r.case_id, r.dataset, "training", "swapped_split", r.image_path, r.centroids_path,
                               r.mask_path) for r in super().case_records().records]

    with pytest.raises(AssertionError, match="split 'training' is not one of"):
        check_source(Swapped, tmp_path)


def test_registration_rules(clean_sources):
    with pytest.raises(Exception, match="already registered"):
        register_source("folder")(FolderSource)
    with pytest.raises(Exception, match="must subclass DataSource"):
        register_source("plain")(dict)

    class NoDefault(DataSource):
        @dataclass(frozen=True)
        class Options:
            root: str

    with pytest.raises(Exception, match="every option needs a default"):
        register_source("no_default")(NoDefault)


def test_readme_source_example_keeps_the_contract_and_runs_in_a_datamodule(clean_sources, tmp_path):
    namespace: dict = {}
    exec(compile(readme_example("## Add a data source"), "my_sources.py", "exec"), namespace)
    source = get_source("manifest")
    check_source(source, tmp_path / "contract")
    options = source.example(tmp_path / "data")
    dm = VertebraDataModule(DataConfig(source="manifest", options=options, cache_dir=str(tmp_path / "cache"),
                                       spacing_mm=4.0))
    dm.setup("fit")
    assert dm.case_ids("train") == ["a"] and dm.case_ids("test") == ["b"]
    assert sorted(n for n, c in zip(dm.label_names, dm.case_info("b").centroids_world_mm) if c[0] == c[0]) == \
        ["L1", "L2", "L3"]
    with pytest.raises(InputError, match="data.manifest.csv is not a file"):
        VertebraDataModule(DataConfig(source="manifest", options={"csv": str(tmp_path / "none.csv")})).records()


@pytest.mark.slow
def test_pip_installed_source_is_found_through_its_entry_point(tmp_path):
    """A real ``pip install`` of the README example into a private folder; a fresh process finds the source
    through the entry point, lists it, and a run config that selects it passes a dry run."""
    env = pip_install_plugin(tmp_path, "my_sources", readme_example("## Add a data source"), "spinebench.sources")
    listed = subprocess.run([sys.executable, "-m", "spinebench", "list", "--sources"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert listed.returncode == 0 and re.search(r"^manifest\s+Cases listed in a CSV file", listed.stdout, re.M)
    data = tmp_path / "data"
    data.mkdir()
    code = ("import sys, pathlib; from spinebench.datamodules.sources import get_source; "
            "print(get_source('manifest').example(pathlib.Path(sys.argv[1])).csv)")
    csv_path = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, env=env,
                              timeout=120).stdout.strip()
    dry = subprocess.run([sys.executable, "-m", "spinebench", "run", "--config", "smoke", "--dry-run", "--out",
                          str(tmp_path / "run"), "--set", "data.source=manifest", "--set",
                          f"data.manifest.csv={csv_path}"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "data: manifest" in dry.stdout and not (tmp_path / "run").exists()

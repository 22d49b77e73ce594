"""The method registry: registration rules, lookups that list valid names, CLI listing and plugins."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from spinebench.datamodules.errors import InputError
from spinebench.methods import create_method, get_method_spec, list_methods, method_config, register_method, registry
from spinebench.methods.di2in import DI2IN, DI2INConfig
from spinebench.methods.registry import MethodRegistryError
from tests.plugin_fixtures import pip_install_plugin, readme_example

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_registry():
    saved = registry.METHODS.snapshot()  # built-ins loaded first
    yield
    registry.METHODS.restore(saved)


def test_duplicate_and_bad_registrations_are_rejected(clean_registry):
    with pytest.raises(MethodRegistryError, match="already registered"):
        register_method("di2in", module_cls=DI2IN, config_cls=DI2INConfig, family="di2in", description="again")
    with pytest.raises(MethodRegistryError, match="valid options"):
        register_method("x", module_cls=DI2IN, config_cls=DI2INConfig, family="di2in", description="", widthh=3)
    with pytest.raises(MethodRegistryError, match="dataclass"):
        register_method("y", module_cls=DI2IN, config_cls=dict, family="di2in", description="")
    assert "x" not in list_methods() and "y" not in list_methods()


def test_variant_overrides_and_lookups(clean_registry):
    register_method("di2in_deep", module_cls=DI2IN, config_cls=DI2INConfig, family="di2in", description="d",
                    depth=4, message_passing=True)  # fmt: skip
    assert list_methods("di2in_d*") == ["di2in_deep"]
    assert method_config("di2in_deep").depth == 4
    assert method_config("di2in_deep", depth=2).depth == 2  # call-site overrides win over registered ones
    assert create_method("di2in_deep", depth=2).data_requirements().pad_multiple == 4
    assert get_method_spec("di2in_deep").overrides == {"depth": 4, "message_passing": True}


def test_unknown_names_and_keys_list_the_valid_ones():
    with pytest.raises(MethodRegistryError, match=r"unknown method 'di2n'; registered methods: .*di2in_mp_sparsity"):
        create_method("di2n")
    with pytest.raises(MethodRegistryError, match=r"unknown option\(s\) sigma .*valid options: .*sigma_vox"):
        create_method("di2in", sigma=2.0)
    assert issubclass(MethodRegistryError, InputError)  # the CLI reports it in one line, exit 2


def test_cli_list_prints_name_family_description_and_rejects_unknown_pattern(capsys):
    from spinebench.benchmark.cli import main

    assert main(["list", "di2in*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["di2in", "di2in_mp", "di2in_mp_sparsity"]
    assert all(line.split()[1] == "di2in" for line in lines) and "message passing" in lines[1]
    assert main(["list", "nothing*"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "registered methods: di2in" in err
    assert main(["list", "di2in_mp", "--options"]) == 0
    assert re.search(r"^\s+\* message_passing = True$", capsys.readouterr().out, re.M)


@pytest.mark.slow
def test_pip_installed_plugin_is_listed_and_contract_tested(tmp_path):
    """The README example, pip-installed for real, found through its entry point and contract-tested."""
    env = pip_install_plugin(tmp_path, "my_methods", readme_example("## Register a new method", 40),
                             "spinebench.methods")
    contract = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_method_contract.py",
         "-k", "pooled_regressor"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert contract.returncode == 0, contract.stdout[-2000:]
    # the entry point registered it, so the registry-parametrized contract tests ran for it
    assert re.search(r"\b4 passed", contract.stdout) and "no tests ran" not in contract.stdout

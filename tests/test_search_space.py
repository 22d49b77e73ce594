"""Search-space parsing: bad spaces fail at start-up naming their key; sampling lands on experiment overrides."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import pytest
import yaml

from spinebench.benchmark.search_space import SearchSpaceError, apply_overrides, parse_search_space
from spinebench.methods import registry
from spinebench.methods.base import VertebraMethod

TRAINER_KEYS = ("max_epochs", "max_steps", "precision")


@dataclass(frozen=True)
class _ToyConfig:
    num_vertebrae: int = 26
    learning_rate: float = 1e-3
    base_channels: int = 8
    deep_supervision: bool = False
    activation: str = "relu"
    sigma_vox: float = 2.0
    width: int | None = None


class _ToyMethod(VertebraMethod):
    family = "toy"


@pytest.fixture(scope="module")
def toy() -> str:
    name = "_toy_tune_method"
    if name not in registry.list_methods():
        registry.register_method(name, module_cls=_ToyMethod, config_cls=_ToyConfig, family="toy", description="test")
    return name


def _parse(space_yaml: str, toy: str):
    raw = yaml.safe_load(space_yaml.replace("TOY", toy))
    return parse_search_space(raw, methods=[toy], trainer_keys=TRAINER_KEYS)


GOOD = """
methods:
  TOY:
    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    sigma_vox: {type: float, low: 1.5, high: 3.0, step: 0.5}
    base_channels: {type: categorical, choices: [4, 8, 16]}
    deep_supervision: {type: categorical, choices: [true, false]}
trainer:
  max_epochs: {type: int, low: 1, high: 5, step: 2}
"""


def test_sampling_maps_onto_method_and_trainer_overrides(toy):
    space = _parse(GOOD, toy)
    assert space.names == [f"{toy}.learning_rate", f"{toy}.sigma_vox", f"{toy}.base_channels",
                           f"{toy}.deep_supervision", "trainer.max_epochs"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen_epochs = set()
    for _ in range(20):
        trial = study.ask()
        overrides = space.sample(trial)
        lr = overrides[f"methods.{toy}.overrides.learning_rate"]
        assert 1e-4 <= lr <= 1e-2
        assert overrides[f"methods.{toy}.overrides.sigma_vox"] in (1.5, 2.0, 2.5, 3.0)
        assert overrides[f"methods.{toy}.overrides.base_channels"] in (4, 8, 16)
        assert overrides["trainer.max_epochs"] in (1, 3, 5)
        seen_epochs.add(overrides["trainer.max_epochs"])
        # Optuna recorded the same values under the short names, and they map back onto the same keys
        assert space.overrides_from_params(trial.params) == overrides
        study.tell(trial, lr)
    assert seen_epochs == {1, 3, 5}
    dists = study.trials[0].distributions
    assert dists[f"{toy}.learning_rate"].log is True and dists[f"{toy}.sigma_vox"].step == 0.5


def test_apply_overrides_sets_nested_keys_without_touching_the_input(toy):
    experiment = {"methods": {toy: {"overrides": {"base_channels": 8}}, "other": {}}, "trainer": {"max_epochs": 9}}
    out = apply_overrides(experiment, {f"methods.{toy}.overrides.learning_rate": 0.01, "trainer.max_epochs": 3,
                                       "methods.other.overrides.x": 1})
    assert out == {"methods": {toy: {"overrides": {"base_channels": 8, "learning_rate": 0.01}},
                               "other": {"overrides": {"x": 1}}}, "trainer": {"max_epochs": 3}}
    assert experiment["trainer"]["max_epochs"] == 9 and "learning_rate" not in experiment["methods"][toy]["overrides"]


BAD = [
    ("methods: {TOY: {learnin_rate: {type: float, low: 0.1, high: 1}}}",
     "tune.space.methods.TOY.learnin_rate: unknown parameter"),
    ("methods: {TOY: {learning_rate: {type: float, low: 1, high: 0.1}}}",
     "tune.space.methods.TOY.learning_rate: inverted range"),
    ("methods: {TOY: {learning_rate: {type: float, low: 0.1, high: 0.1}}}",
     "tune.space.methods.TOY.learning_rate: empty range"),
    ("methods: {TOY: {learning_rate: {type: float, low: 0, high: 0.1, log: true}}}",
     "tune.space.methods.TOY.learning_rate: log scale needs positive bounds"),
    ("methods: {TOY: {learning_rate: {type: float, low: 0.001, high: 0.1, log: true, step: 0.01}}}",
     "'step' and 'log: true' cannot be combined"),
    ("methods: {TOY: {learning_rate: {type: normal, low: 0, high: 1}}}",
     "tune.space.methods.TOY.learning_rate.type: expected one of float, int, categorical"),
    ("methods: {TOY: {learning_rate: {type: float, lo: 0, high: 1}}}",
     "tune.space.methods.TOY.learning_rate.lo: unknown key"),
    ("methods: {TOY: {learning_rate: {type: float, high: 1}}}", "needs 'low'"),
    ("methods: {TOY: {base_channels: {type: int, low: 2.5, high: 8}}}", "integer bounds"),
    ("methods: {TOY: {base_channels: {type: float, low: 2, high: 8}}}",
     "tune.space.methods.TOY.base_channels: float 2.0 does not fit the option's type int"),
    ("methods: {TOY: {deep_supervision: {type: int, low: 0, high: 1}}}", "int 0 does not fit the option's type bool"),
    ("methods: {TOY: {width: {type: float, low: 2, high: 8}}}", "float 2.0 does not fit the option's type int | None"),
    ("methods: {TOY: {activation: {type: categorical, choices: [relu, 3]}}}",
     "choice 3 does not fit the option's type str"),
    ("methods: {TOY: {base_channels: {type: categorical, choices: []}}}", "choices: expected a non-empty list"),
    ("methods: {TOY: {base_channels: {type: categorical, choices: [4, 4]}}}", "duplicate values"),
    ("methods: {TOY: {sigma_vox: {type: float, low: 1, high: 2, step: 5}}}", "larger than the range"),
    ("methods: {no_such_method: {lr: {type: float, low: 0.1, high: 1}}}",
     "tune.space.methods.no_such_method: unknown method 'no_such_method'; registered methods:"),
    ("trainer: {max_epoch: {type: int, low: 1, high: 3}}",
     "tune.space.trainer.max_epoch: unknown trainer parameter; valid parameters: max_epochs, max_steps, precision"),
    ("optimizer: {lr: {type: float, low: 0.1, high: 1}}", "tune.space.optimizer: unknown section"),
    ("methods: {TOY: {}}", "tune.space.methods.TOY: expected a non-empty mapping"),
    ("{}", "tune.space: expected a mapping"),
    ("methods: {}", "tune.space.methods: expected a mapping method -> parameters"),
    ("trainer: {}", "tune.space.trainer: expected a non-empty mapping"),
]


@pytest.mark.parametrize("space_yaml, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_space_fails_with_one_line_naming_the_key(toy, space_yaml, message):
    with pytest.raises(SearchSpaceError) as err:
        _parse(space_yaml, toy)
    text = str(err.value)
    assert message.replace("TOY", toy) in text and "\n" not in text


def test_either_section_alone_is_a_space(toy):
    assert _parse("trainer: {max_epochs: {type: int, low: 1, high: 3}}", toy).names == ["trainer.max_epochs"]
    assert _parse("methods: {TOY: {sigma_vox: {type: float, low: 1, high: 3}}}", toy).names == [f"{toy}.sigma_vox"]


def test_space_may_only_tune_methods_of_the_experiment(toy):
    raw = yaml.safe_load(f"methods: {{{toy}: {{learning_rate: {{type: float, low: 0.1, high: 1}}}}}}")
    with pytest.raises(SearchSpaceError, match=r"is not in the experiment's methods \(other\)"):
        parse_search_space(raw, methods=["other"], trainer_keys=TRAINER_KEYS)


def test_overrides_from_params_refuses_parameters_of_another_space(toy):
    space = _parse(GOOD, toy)
    with pytest.raises(SearchSpaceError, match="not in the search space"):
        space.overrides_from_params({"trainer.precision": "16"})

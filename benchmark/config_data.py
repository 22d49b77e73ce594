"""The ``data:`` section of an experiment: the datamodule's fields plus one section per data source, of which
``source`` selects one; and ``test_sets:``, further datasets every trained model is also tested on::

    data:
      source: folder
      folder: {root: /data/cts, test_fraction: 1.0}
      spacing_mm: 2.0
    test_sets:
      real: {source: folder, folder: {root: /data/real, test_fraction: 1.0}}

Every source section present is checked against that source's ``Options`` (a config can carry several and
switch with ``--set data.source=...``); only the selected one is kept. The flat keys of spinebench 0.1
(``data.root``, ``data.phantom_train``, ``data.phantom: {<generator setting>}``, ...) still work for one release,
each with a one-line deprecation message.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spinebench.benchmark.config_types import ConfigError, _check_keys, build_typed
from spinebench.datamodules.datamodule import DataConfig
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.labels import get_label_set
from spinebench.datamodules.plugins import deprecated
from spinebench.datamodules.sources import get_source, list_sources

_DEFAULT_SOURCE = next(f.default for f in dataclasses.fields(DataConfig) if f.name == "source")


def resolve_data(raw: Any) -> DataConfig:
    """The ``DataConfig`` of a raw ``data:`` mapping; every problem is a one-line ``ConfigError`` naming the key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"data: expected a mapping of data options, got {raw!r}")
    raw = dict(raw)
    sources = list_sources()
    source = raw.get("source", _DEFAULT_SOURCE)
    if source not in sources:
        raise ConfigError(f"data.source: unknown data source {source!r}; valid sources: {', '.join(sorted(sources))}")
    _move_legacy_keys(raw, source, sources)
    own = [f.name for f in dataclasses.fields(DataConfig) if f.name != "options"]
    _check_keys(raw, own + [s for s in sources if s not in own], "data")
    options = {name: source_options(name, raw.pop(name)) for name in sources if name in raw}
    if "label_set" in raw:
        try:
            get_label_set(raw["label_set"])
        except (InputError, KeyError, ValueError) as exc:
            raise ConfigError(f"data.label_set: {exc}") from None
    return build_typed(DataConfig, {**raw, "options": options.get(source)}, "data")


def source_options(name: str, raw: Any, where: str | None = None):
    """The typed ``Options`` of source ``name`` from its YAML section (None or a mapping) at key ``where``."""
    cls = get_source(name)
    where = where or f"data.{name}"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of the {name} source's options, got {raw!r}")
    return build_typed(cls.Options, cls.migrate_options(raw, where), where)


def _move_legacy_keys(raw: dict[str, Any], source: str, sources: list[str]) -> None:
    """Flat keys of spinebench 0.1 into the section of the source they belong to (the selected one if it has
    that option), each with its deprecation message."""
    owners: dict[str, list[tuple[str, str]]] = {}
    for name in sources:
        for old, new in get_source(name).legacy_keys.items():
            owners.setdefault(old, []).append((name, new))
    for old in [k for k in raw if k in owners and k not in sources]:
        mine = [t for t in owners[old] if t[0] == source]
        if not mine:  # an option of other sources that the selected one never read
            raw.pop(old)
            others = ", ".join(sorted(f"data.{name}.{new}" for name, new in owners[old]))
            deprecated(f"data.{old}", f"{others} (source {source!r} has no such option and ignores it)")
            continue
        target, new = mine[0]
        section = raw.get(target)
        section = {} if section is None else section
        if not isinstance(section, Mapping):
            raise ConfigError(f"data.{target}: expected a mapping of the {target} source's options, got {section!r}")
        if section.get(new) is not None:  # a null placeholder (``root: null``) is not a second value
            raise ConfigError(f"data.{old}: also given as data.{target}.{new}; keep only data.{target}.{new}")
        deprecated(f"data.{old}", f"data.{target}.{new}")
        raw[target] = {**section, new: raw.pop(old)}


@dataclass(frozen=True)
class TestSet:
    """A further test dataset of a run: its name (the records' ``dataset``) and the run's data section with the
    set's own source and options (spacing, label set and cache are the run's: the models see what they learnt on)."""

    name: str
    data: DataConfig

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.data.source, self.data.source: dataclasses.asdict(self.data.options)}


RESERVED_TEST_SET_NAMES = ("train", "val", "test", "test_sets")


def resolve_test_sets(raw: Any, data: DataConfig) -> tuple[TestSet, ...]:
    """``test_sets: {NAME: {source: SOURCE, SOURCE: {options}}}`` -> the sets, in the file's order."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"test_sets: expected a mapping NAME -> {{source: SOURCE, SOURCE: {{...}}}}, got {raw!r}")
    sources = list_sources()
    out = []
    for name, body in raw.items():
        where = f"test_sets.{name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)) or name in RESERVED_TEST_SET_NAMES:
            raise ConfigError(f"{where}: a test set's name is its dataset name in the records: letters, digits, "
                              f"'.', '_', '-', not {', '.join(RESERVED_TEST_SET_NAMES)}")
        if not isinstance(body, Mapping) or "source" not in body:
            raise ConfigError(f"{where}: expected {{source: SOURCE, SOURCE: {{options}}}}; sources: "
                              f"{', '.join(sorted(sources))}")
        source = body["source"]
        if source not in sources:
            raise ConfigError(f"{where}.source: unknown data source {source!r}; valid sources: "
                              f"{', '.join(sorted(sources))}")
        _check_keys(body, ["source", source], where)
        options = source_options(source, body.get(source), f"{where}.{source}")
        out.append(TestSet(str(name), dataclasses.replace(data, source=source, options=options)))
    return tuple(out)

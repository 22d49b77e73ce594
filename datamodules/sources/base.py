"""``DataSource``, the base class of every data source, and the source registry.

A source is one registered class in one file: a frozen dataclass of options (``Options``), ``case_records()``
that lists the cases (cheap: names and paths, nothing read) and ``load_case()`` that reads one. The experiment
YAML selects it by name and fills its options from the section of the same name::

    data:
      source: folder
      folder: {root: /data/cts, test_fraction: 1.0}

Built-in sources are imported on first use; installed packages add theirs through the entry-point group
``spinebench.sources`` (as methods do through ``spinebench.methods``: ``datamodules.plugins``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from spinebench.datamodules.cases import CaseRecord, RawCase, SourceListing, files_fingerprint
from spinebench.datamodules.ct_io import read_geometry
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.plugins import PluginRegistry
from spinebench.datamodules.sources.files import load_annotated_image

ENTRY_POINT_GROUP = "spinebench.sources"
_BUILTIN_MODULES: tuple[str, ...] = tuple(
    f"spinebench.datamodules.sources.{name}" for name in ("phantom", "csi2014", "verse", "folder")
)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a source that has none."""


class DataSource:
    """Lists the cases of a dataset and loads one of them.

    Subclass it, set ``Options`` (a frozen dataclass whose fields all have defaults: the YAML section
    ``data.<name>``), implement ``case_records`` and, unless the records are image files with a centroid file or
    vertebra mask (which the default ``load_case`` reads), ``load_case``; then ``@register_source("name")``.
    ``example`` writes a tiny dataset of the source's kind, so that the contract check
    (``datamodules.sources.contract.check_source``) can run it.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    # Keys of the flat ``data:`` section of spinebench 0.1 that are now this source's options (old -> new);
    # they keep working for one release with a deprecation message.
    legacy_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Any = None, spacing_mm: float = 2.0) -> None:
        """``spacing_mm``: the grid the cases are preprocessed to (a generated source may generate at it)."""
        self.options = self.Options() if options is None else options
        self.spacing_mm = float(spacing_mm)

    # --- what every source implements ---------------------------------------------------------------
    def case_records(self) -> list[CaseRecord] | SourceListing:
        """Every case with its split (``SPLITS``). Nothing is read; ``InputError`` names what is wrong."""
        raise NotImplementedError

    @classmethod
    def load_case(cls, record: CaseRecord) -> RawCase:
        """The CT in HU, its geometry and its annotated centroids (LPS mm); ``InputError`` when unusable."""
        return load_annotated_image(record)

    @classmethod
    def example(cls, folder: Path) -> Any:
        """Options of a tiny dataset of this source's kind, written into ``folder`` (for the contract check)."""
        raise NotImplementedError(f"data source {cls.name!r} has no example dataset")

    # --- what a source may refine ---------------------------------------------------------------------
    @classmethod
    def fingerprint(cls, record: CaseRecord) -> dict:
        """What a preprocessed case depends on (the cache key): path, size and mtime of its files, its params."""
        return files_fingerprint(record)

    @classmethod
    def conditions(cls, metadata: Mapping[str, Any]) -> dict[str, object]:
        """Case conditions from a loaded case's metadata, one ``meta_<key>`` column each in the records."""
        return {}

    def estimated_voxels(self, record: CaseRecord) -> float | None:
        """Upper bound of a case's voxels at ``spacing_mm``, from what is known without reading voxels (the image
        header); None when unknown (a DICOM folder would be read in full)."""
        if record.image_path is None or not Path(record.image_path).is_file():
            return None
        g = read_geometry(record.image_path)
        extent = [n * s for n, s in zip(g.shape, g.spacing_mm)]
        return float(extent[0] * extent[1] * extent[2]) / self.spacing_mm**3

    @classmethod
    def migrate_options(cls, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Old option names of this source's section under their new ones (deprecation messages included)."""
        return dict(options)

    # --- used by the datamodule ------------------------------------------------------------------------
    def listing(self) -> SourceListing:
        out = self.case_records()
        return out if isinstance(out, SourceListing) else SourceListing(list(out))

    @classmethod
    def build_options(cls, options: Any) -> Any:
        """``options`` as an ``Options`` instance (None: the defaults; a mapping: its keys checked)."""
        if options is None:
            return cls.Options()
        if isinstance(options, cls.Options):
            return options
        if not isinstance(options, Mapping):
            raise InputError(f"data.{cls.name}: expected a mapping of options, got {options!r}")
        valid = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise InputError(f"data.{cls.name}.{unknown[0]}: unknown option of source {cls.name!r}; "
                             f"valid options: {', '.join(valid) or '(none)'}")
        return cls.Options(**options)


SOURCES: PluginRegistry[type[DataSource]] = PluginRegistry("data source", ENTRY_POINT_GROUP, _BUILTIN_MODULES)


def register_source(name: str):
    """Class decorator: register a ``DataSource`` subclass under ``name`` (``data.source: name`` selects it)."""

    def decorate(cls: type[DataSource]) -> type[DataSource]:
        if not (isinstance(cls, type) and issubclass(cls, DataSource)):
            raise InputError(f"data source {name!r} must subclass DataSource, got {cls!r}")
        options = cls.Options
        if not dataclasses.is_dataclass(options) or not options.__dataclass_params__.frozen:
            raise InputError(f"data source {name!r}: Options must be a frozen dataclass, got {options!r}")
        required = [f.name for f in dataclasses.fields(options)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if required:
            raise InputError(f"data source {name!r}: every option needs a default ({', '.join(required)} has none)")
        cls.name = name
        return SOURCES.add(name, cls)

    return decorate


def get_source(name: str) -> type[DataSource]:
    return SOURCES.get(name)


def list_sources(pattern: str = "*") -> list[str]:
    return SOURCES.names(pattern)


def load_case(record: CaseRecord) -> RawCase:
    """Read (or generate) one case with the source that listed it."""
    return get_source(record.source).load_case(record)


def record_fingerprint(record: CaseRecord) -> dict:
    return get_source(record.source).fingerprint(record)

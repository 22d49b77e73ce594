"""The ``phantom`` source: cases generated from (seed, index) by ``datamodules.phantom``; no files.

Train / val / test take disjoint index ranges at fixed offsets, so changing ``n_train`` never changes the test
cases. ``generator`` holds ``PhantomConfig`` overrides (difficulty rates, body size, ...); cases are generated at
the data's ``spacing_mm`` (no resampling blur) and without the mask nobody reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from spinebench.datamodules import phantom
from spinebench.datamodules.cases import SPLITS, CaseRecord, RawCase
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.plugins import deprecated
from spinebench.datamodules.sources.base import DataSource, register_source

# Phantom case index = offset of the split + i (fixed, so the test cases do not depend on n_train / n_val).
PHANTOM_INDEX_OFFSET: dict[str, int] = {"train": 0, "val": 100_000, "test": 200_000}
# what a cached case depends on: every phantom module (a glob, so a new one is never left out) and the shape model
_GENERATOR_GLOBS = ("phantom*.py", "shape_model.py", "data/spine_shape_model.npz")


@dataclass(frozen=True)
class PhantomOptions:
    n_train: int = 16
    n_val: int = 4
    n_test: int = 4
    seed: int = 0
    # PhantomConfig overrides; "schema" lets the config layer check every key and value type by name
    generator: dict = field(default_factory=dict, metadata={"schema": phantom.PhantomConfig})

    def __post_init__(self) -> None:
        for split in SPLITS:
            n = getattr(self, f"n_{split}")
            if n < 0:
                raise InputError(f"data.phantom.n_{split}: must be >= 0, got {n}")


@register_source("phantom")
class PhantomSource(DataSource):
    """Synthetic spine CTs generated from (seed, index): no files, fixed index ranges per split."""

    Options = PhantomOptions
    legacy_keys = {"phantom_train": "n_train", "phantom_val": "n_val", "phantom_test": "n_test",
                   "phantom_seed": "seed"}

    def generator_config(self) -> phantom.PhantomConfig:
        """The generator's settings for this data: the overrides at the data's spacing, without the mask."""
        return phantom.PhantomConfig(**dict(self._overrides()))

    def _overrides(self) -> tuple[tuple[str, Any], ...]:
        merged = {"spacing_mm": self.spacing_mm, "with_mask": False, **self.options.generator}
        return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in merged.items()))

    def case_records(self) -> list[CaseRecord]:
        o, items = self.options, self._overrides()
        try:
            config = phantom.PhantomConfig(**dict(items))  # fail at start-up, naming the bad key
        except TypeError as exc:
            valid = ", ".join(f.name for f in fields(phantom.PhantomConfig))
            raise InputError(f"data.phantom.generator: bad setting ({exc}); valid keys: {valid}") from None
        phantom.check_resources(config)  # and a spacing this machine cannot generate
        records = []
        for split in SPLITS:
            for i in range(getattr(o, f"n_{split}")):
                index = PHANTOM_INDEX_OFFSET[split] + i
                params = (("seed", o.seed), ("index", index), ("overrides", items))
                records.append(CaseRecord(phantom.case_id(o.seed, index), "phantom", split, "phantom", params=params))
        return records

    @classmethod
    def load_case(cls, record: CaseRecord) -> RawCase:
        config = phantom.PhantomConfig(**dict(record.param("overrides", ())))
        case = phantom.generate_case(record.param("seed"), record.param("index"), config)
        meta = dict(record.metadata)
        meta.update(_jsonable(case.metadata))
        return RawCase(np.asarray(case.ct_hu), case.geometry,
                       {n: np.asarray(c, float) for n, c in case.centroids_mm.items()}, meta)

    @classmethod
    def fingerprint(cls, record: CaseRecord) -> dict:
        """The generator's arguments and the hash of its source code (editing the phantom invalidates the cache)."""
        overrides = [list(kv) for kv in record.param("overrides", ())]
        return {"phantom": [record.param("seed"), record.param("index"), overrides],
                "generator_sha1": _generator_sha1()}

    @classmethod
    def conditions(cls, metadata: Mapping[str, Any]) -> dict[str, object]:
        """The difficulty switches (``{"applied": bool}`` entries) as flags, plus ``curvature`` (scoliosis or
        abnormal kyphosis); identifiers and nested settings are left out."""
        out: dict[str, object] = {}
        for key, value in metadata.items():
            if isinstance(value, dict) and isinstance(value.get("applied"), bool):
                out[key] = value["applied"]
        if "scoliosis" in out or "kyphosis" in out:
            out["curvature"] = bool(out.get("scoliosis")) or bool(out.get("kyphosis"))
        return out

    def estimated_voxels(self, record: CaseRecord) -> float:
        return phantom.case_voxels(self.generator_config())

    @classmethod
    def example(cls, folder: Path) -> PhantomOptions:
        return PhantomOptions(n_train=1, n_val=0, n_test=1, seed=3, generator={"fov_vertebrae": [4, 6]})

    @classmethod
    def migrate_options(cls, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Generator settings written directly in ``data.phantom`` (spinebench 0.1) move into ``generator``."""
        own = {f.name for f in fields(PhantomOptions)}
        generator_keys = {f.name for f in fields(phantom.PhantomConfig)}
        out = {k: v for k, v in options.items() if k in own or k not in generator_keys}
        moved = {k: v for k, v in options.items() if k not in own and k in generator_keys}
        if moved:
            generator = dict(out.get("generator") or {})
            for key, value in moved.items():
                if key in generator:
                    raise InputError(f"{where}.{key}: also given as {where}.generator.{key}; keep only that one")
                deprecated(f"{where}.{key}", f"{where}.generator.{key}")
                generator[key] = value
            out["generator"] = generator
        return out


_SHA1: str | None = None


def generator_files() -> list[Path]:
    """The files a cached phantom case depends on (their hash is part of the cache key)."""
    folder = Path(phantom.__file__).resolve().parent
    return sorted({f for pattern in _GENERATOR_GLOBS for f in folder.glob(pattern) if f.is_file()})


def _generator_sha1() -> str:
    global _SHA1
    if _SHA1 is None:
        h = hashlib.sha1()
        for path in generator_files():
            h.update(path.name.encode())
            h.update(path.read_bytes())
        _SHA1 = h.hexdigest()
    return _SHA1


def _jsonable(value):
    """Phantom metadata as plain JSON types (numpy scalars/arrays become Python numbers/lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

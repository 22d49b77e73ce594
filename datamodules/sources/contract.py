"""The contract every data source passes, as one function a source's author can call in their own tests::

    from spinebench.datamodules.sources.contract import check_source
    check_source(MySource, tmp_path)          # raises AssertionError naming the broken promise

It lists the source's ``example`` dataset twice (same records: listing is deterministic), checks the records
(known splits, unique ids, picklable, JSON-able cache key, the source named), loads each case (a finite HU
volume on its geometry, annotated centroids with schema names inside the volume) and preprocesses it into a
cache that the second pass hits.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from spinebench.datamodules.cases import SPLITS, RawCase
from spinebench.datamodules.labels import ALL_NAMES
from spinebench.datamodules.preprocess import PreprocessParams, ensure_entry
from spinebench.datamodules.sources.base import DataSource, get_source

MAX_CASES = 3  # loaded and preprocessed per check (the example datasets hold two or three)


def check_source(source_cls: type[DataSource], folder: str | Path, spacing_mm: float = 4.0) -> None:
    folder = Path(folder)
    name = source_cls.name
    assert name and get_source(name) is source_cls, f"{source_cls.__name__} is not registered (register_source)"
    options = source_cls.example(folder / "data")
    assert isinstance(options, source_cls.Options), f"{name}.example must return {source_cls.Options.__name__}"
    first = source_cls(options, spacing_mm=spacing_mm).listing()
    again = source_cls(options, spacing_mm=spacing_mm).listing()
    assert first.records, f"{name}: the example dataset lists no case"
    assert first.records == again.records, f"{name}: two listings of the same data differ"
    ids = [r.case_id for r in first.records]
    assert len(set(ids)) == len(ids), f"{name}: case ids repeat: {ids}"
    for record in first.records:
        where = f"{name}, case {record.case_id!r}"
        assert record.split in SPLITS, f"{where}: split {record.split!r} is not one of {SPLITS}"
        assert record.source == name, f"{where}: record.source is {record.source!r}, not {name!r}"
        assert pickle.loads(pickle.dumps(record)) == record, f"{where}: the record does not survive pickling"
        key = json.dumps(source_cls.fingerprint(record), sort_keys=True)
        assert key == json.dumps(source_cls.fingerprint(record), sort_keys=True), f"{where}: fingerprint varies"
    params = PreprocessParams(spacing_mm=spacing_mm)
    for record in first.records[:MAX_CASES]:
        _check_raw_case(f"{name}, case {record.case_id!r}", source_cls.load_case(record))
        entry, hit = ensure_entry(folder / "cache", record, params)
        assert not hit and entry.case_id == record.case_id and entry.split == record.split
        _, hit = ensure_entry(folder / "cache", record, params)
        assert hit, f"{name}, case {record.case_id!r}: preprocessing it again missed the cache"
        json.dumps(source_cls.conditions(entry.metadata))  # the records' meta_* columns: plain values


def _check_raw_case(where: str, raw: RawCase) -> None:
    assert isinstance(raw, RawCase), f"{where}: load_case returned {type(raw).__name__}, not RawCase"
    array = raw.ct_array()
    assert tuple(array.shape) == tuple(raw.geometry.shape), f"{where}: volume {array.shape} != geometry shape"
    assert np.isfinite(array).all(), f"{where}: the volume holds NaN or inf"
    assert -2000 <= float(np.median(array)) <= 3000, f"{where}: the volume does not look like HU"
    assert raw.centroids_mm, f"{where}: no annotated vertebra"
    json.dumps(raw.metadata)  # cached beside the volume
    for label, mm in raw.centroids_mm.items():
        assert label in ALL_NAMES, f"{where}: {label!r} is not a vertebra name of the label schema"
        vox = raw.geometry.world_to_vox(np.asarray(mm, float))
        inside = np.all(vox >= -0.5) and np.all(vox <= np.asarray(raw.geometry.shape) - 0.5)
        assert np.isfinite(vox).all() and inside, f"{where}: {label} at voxel {vox} lies outside the volume"

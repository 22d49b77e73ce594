"""What a data source hands over: ``CaseRecord`` (one case, cheap: names and paths only, nothing read),
``SourceListing`` (a source's records and what it could not match) and ``RawCase`` (a loaded case before
preprocessing)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class CaseRecord:
    """One case of a source: where its data come from and its split.

    A record holds everything its source needs to load it (``source`` names the registered source whose
    ``load_case`` reads it), so loading needs no options and works in worker processes. File-based sources fill
    ``image_path`` (a file or a DICOM folder) and ``centroids_path`` or ``mask_path``; anything else a load
    depends on goes in ``params`` (JSON-able values; part of the cache key).
    """

    case_id: str
    dataset: str  # the records' dataset column, e.g. "phantom", "csi2014", "verse2020", "folder"
    split: str  # "train", "val" or "test"
    source: str  # registered source name
    image_path: str | None = None
    centroids_path: str | None = None
    mask_path: str | None = None  # vertebra label mask, used when there is no centroid file
    params: tuple[tuple[str, Any], ...] = ()
    metadata: dict = field(default_factory=dict, compare=False)

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    @property
    def display_path(self) -> str:
        """What a warning names: the image file, or the source and its parameters."""
        if self.image_path is not None:
            return self.image_path
        return f"{self.source}({', '.join(f'{k}={v}' for k, v in self.params)})"


@dataclass(frozen=True)
class SourceListing:
    records: list[CaseRecord]
    missing: list[str] = field(default_factory=list)  # ids named by a split list but not found
    unlisted: list[str] = field(default_factory=list)  # cases found but in no split


@dataclass(frozen=True)
class RawCase:
    """A loaded case before preprocessing: HU volume, its geometry, annotated centroids (name -> LPS mm)."""

    ct_hu: Any  # numpy array (numpy axis order), or the SimpleITK image a file was read into (no numpy copy)
    geometry: Any  # datamodules.geometry.Geometry
    centroids_mm: dict[str, np.ndarray]
    metadata: dict

    def ct_array(self) -> np.ndarray:
        """The HU volume as a numpy array in numpy axis order (a copy when it was read from a file)."""
        if isinstance(self.ct_hu, np.ndarray):
            return self.ct_hu
        import SimpleITK as sitk

        return sitk.GetArrayFromImage(self.ct_hu)


def files_fingerprint(record: CaseRecord) -> dict:
    """Path + size + mtime of every file of a record (``os.stat`` only, nothing is opened), and its params."""
    files: dict[str, Any] = {}
    for role, path in (("image", record.image_path), ("centroids", record.centroids_path), ("mask", record.mask_path)):
        if path is not None:
            files[role] = _stat_fingerprint(Path(path))
    files.update(dict(record.params))
    return files


def _stat_fingerprint(path: Path) -> list:
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out

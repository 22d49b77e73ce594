"""Preprocessing (reorient, resample, clip, z-score) and its on-disk cache.

Pipeline for one case: ``reorient_canonical`` -> ``resample_isotropic(spacing_mm)`` (linear; blocks of voxels
averaged first where the target spacing is more than twice the input's, ``resample.box_factors``) -> clip below at air
(-1000 HU) -> z = (HU - HU_MEAN) / HU_STD. The z-score uses fixed constants, not per-volume statistics, so
a value means the same tissue in every case and padding (air) is the same number everywhere
(``AIR_VALUE``). The constants are the mean / std of a full-field-of-view body CT clipped at air (the
TotalSegmentator example CT in ../shared: -360 / 463 HU), rounded.

Cache entry = ``<cache_dir>/<dataset>/<case_id>-<key>.npy`` (float32 volume, memory-mappable so a crop reads
only its slab) + ``.json`` beside it (geometry, original geometry, centroids in mm, metadata). ``key`` hashes
the source fingerprint (path, size, mtime of each file; phantom arguments and generator code) and the
preprocessing parameters. Both files are written through ``atomic_path``, the ``.npy`` first: the ``.json`` is
the commit record, and an entry counts only when its json exists and its npy has the size the json states.
An interrupted write therefore leaves at most a temporary ``.part`` file (removed by ``remove_stale_parts`` once
an hour old) or an ``.npy`` without its json (overwritten next time), never an entry that is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinebench.datamodules.atomic import atomic_path, write_text_atomic
from spinebench.datamodules.cases import CaseRecord
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.orientation import reorient_canonical, reoriented_geometry
from spinebench.datamodules.resample import isotropic_grid, resample_to
from spinebench.datamodules.resources import require_memory
from spinebench.datamodules.sources import load_case, record_fingerprint

PREPROCESS_VERSION = 3  # bump when the pipeline changes in a way the parameters do not capture
HU_AIR = -1000.0  # lower clip: nothing is less dense than air; scanner padding (-2048, -3024) becomes air
HU_MEAN = -350.0
HU_STD = 450.0
AIR_VALUE = (HU_AIR - HU_MEAN) / HU_STD  # the normalised value of air, used for every padding


@dataclass(frozen=True)
class PreprocessParams:
    spacing_mm: float = 2.0
    clip_hu_min: float = HU_AIR
    hu_mean: float = HU_MEAN
    hu_std: float = HU_STD
    # partial-volume averaging when downsampling by more than a factor 2 (``resample.resample_to``); False is plain
    # linear interpolation, which at 8 mm turns a 1 mm CT's texture and noise into aliased speckle
    antialias: bool = True

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0:
            raise InputError(f"data.spacing_mm must be positive, got {self.spacing_mm}")
        if not self.hu_std > 0:
            raise InputError(f"hu_std must be positive, got {self.hu_std}")

    @property
    def air_value(self) -> float:
        return (self.clip_hu_min - self.hu_mean) / self.hu_std


@dataclass(frozen=True)
class CacheEntry:
    """A preprocessed case on disk. ``geometry`` is that of the cached array; world mm are unchanged by
    preprocessing, so ``geometry.vox_to_world`` maps predictions on the array straight to the original frame."""

    case_id: str
    dataset: str
    split: str
    array_path: str
    geometry: Geometry
    original_geometry: Geometry
    centroids_mm: dict  # name -> (3,) LPS mm, every annotated vertebra
    metadata: dict

    def load_array(self, mmap: bool = True) -> np.ndarray:
        """(D, H, W) float32; memory-mapped read-only by default."""
        return np.load(self.array_path, mmap_mode="r" if mmap else None)

    def centroids_world_mm(self, names) -> np.ndarray:
        """(K, 3) LPS mm in the order of ``names``; NaN for vertebrae not annotated."""
        out = np.full((len(names), 3), np.nan)
        for k, name in enumerate(names):
            if name in self.centroids_mm:
                out[k] = self.centroids_mm[name]
        return out

    def centroids_vox(self, names) -> np.ndarray:
        """(K, 3) voxel coords of the cached array; NaN for vertebrae not annotated or outside the volume."""
        vox = self.geometry.world_to_vox(self.centroids_world_mm(names))
        inside = self.geometry.contains_vox(np.nan_to_num(vox, nan=-1e9))
        vox[~inside] = np.nan
        return vox


# --- the pipeline --------------------------------------------------------------------------------


def preprocess_volume(ct_hu, geometry: Geometry, params: PreprocessParams,
                      source: str = "the CT") -> tuple[np.ndarray, Geometry]:  # fmt: skip
    """HU volume in any orientation -> (canonical, isotropic, clipped, z-scored float32 array, its geometry).

    ``ct_hu``: a numpy array, or the SimpleITK image a file was read into (``ct_io.read_sitk_image``): then the
    volume is never copied at full resolution. A volume with NaN or infinite values, or one that is constant
    after clipping at air, is refused (``InputError`` naming ``source``): no method can find anything there."""
    if not isinstance(ct_hu, sitk.Image):
        ct_hu = np.asarray(ct_hu)
    voxels = sitk.GetArrayViewFromImage(ct_hu) if isinstance(ct_hu, sitk.Image) else ct_hu
    if voxels.dtype.kind == "f":  # resampling would spread (or hide) non-finite values: name them here
        _check_finite(voxels, source, "")
    canonical = reoriented_geometry(geometry)
    if np.allclose(canonical.spacing_mm, params.spacing_mm):
        voxels = sitk.GetArrayFromImage(ct_hu) if isinstance(ct_hu, sitk.Image) else ct_hu
        array, geom = reorient_canonical(voxels, geometry)
    else:  # straight onto the canonical isotropic grid: no reoriented full-resolution copy
        geom = isotropic_grid(canonical, params.spacing_mm)
        n_vox = float(np.prod(geom.shape, dtype=np.float64))  # float32 result + the clip and z-score passes
        require_memory(3 * 4 * n_vox, f"{source} resampled to {params.spacing_mm:g} mm ({n_vox / 1e6:,.0f} "
                       "million voxels)")
        array = resample_to(ct_hu, geometry, geom, "linear", params.antialias)
    array = np.maximum(array.astype(np.float32, copy=False), np.float32(params.clip_hu_min))
    array = (array - np.float32(params.hu_mean)) / np.float32(params.hu_std)
    _check_content(array, params, source)
    return np.ascontiguousarray(array, dtype=np.float32), geom


def _check_finite(array: np.ndarray, source: str, when: str) -> None:
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(f"{source}: {bad} of {array.size} voxels are NaN or infinite{when}; a CT holds finite HU "
                         "values")


def _check_content(array: np.ndarray, params: PreprocessParams, source: str) -> None:
    _check_finite(array, source, f" after resampling to {params.spacing_mm} mm")
    low, high = float(array.min()), float(array.max())
    if high - low < 1e-6:
        hu = low * params.hu_std + params.hu_mean
        raise InputError(f"{source}: constant image ({hu:.0f} HU everywhere after clipping at "
                         f"{params.clip_hu_min:.0f} HU): there is no anatomy to find")


# --- the cache -----------------------------------------------------------------------------------


def entry_key(record: CaseRecord, params: PreprocessParams) -> str:
    payload = {"version": PREPROCESS_VERSION, "source": record_fingerprint(record), "params": asdict(params)}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def entry_paths(cache_dir: str | os.PathLike, record: CaseRecord, params: PreprocessParams) -> tuple[Path, Path]:
    base = Path(cache_dir).expanduser() / record.dataset / f"{_safe(record.case_id)}-{entry_key(record, params)}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def read_entry(cache_dir, record: CaseRecord, params: PreprocessParams) -> CacheEntry | None:
    """The cached entry of ``record``, or None when absent or incomplete (no original file is opened)."""
    npy, meta_path = entry_paths(cache_dir, record, params)
    try:
        meta = json.loads(meta_path.read_text())
        if npy.stat().st_size != meta["npy_bytes"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return CacheEntry(
        case_id=record.case_id,
        dataset=record.dataset,
        split=record.split,  # the split is the caller's, not part of the cached content
        array_path=str(npy),
        geometry=_geometry_from_json(meta["geometry"]),
        original_geometry=_geometry_from_json(meta["original_geometry"]),
        centroids_mm={n: np.asarray(c, dtype=np.float64) for n, c in meta["centroids_mm"].items()},
        metadata=meta["metadata"],
    )


def build_entry(cache_dir, record: CaseRecord, params: PreprocessParams) -> CacheEntry:
    """Load, preprocess and write one case atomically. Raises ``InputError`` (or OSError) for a bad case."""
    raw = load_case(record)
    array, geometry = preprocess_volume(raw.ct_hu, raw.geometry, params, record.display_path)
    npy, meta_path = entry_paths(cache_dir, record, params)
    with atomic_path(npy) as tmp:
        np.save(tmp, array)
    meta = {
        "case_id": record.case_id,
        "dataset": record.dataset,
        "npy_bytes": npy.stat().st_size,
        "geometry": _geometry_to_json(geometry),
        "original_geometry": _geometry_to_json(raw.geometry),
        "centroids_mm": {n: [float(v) for v in c] for n, c in raw.centroids_mm.items()},
        "metadata": raw.metadata,
        "params": asdict(params),
        "source": record_fingerprint(record),
    }
    write_text_atomic(meta_path, json.dumps(meta, indent=1, default=str))
    entry = read_entry(cache_dir, record, params)
    if entry is None:  # pragma: no cover - only if the cache folder vanished under us
        raise OSError(f"{meta_path}: cache entry unreadable right after writing")
    return entry


def ensure_entry(cache_dir, record: CaseRecord, params: PreprocessParams) -> tuple[CacheEntry, bool]:
    """(entry, was_cached). Builds the entry on a miss."""
    entry = read_entry(cache_dir, record, params)
    if entry is not None:
        return entry, True
    return build_entry(cache_dir, record, params), False


def remove_stale_parts(cache_dir, older_than_s: float = 3600.0) -> int:
    """Delete temporary ``.part`` files that a killed writer left behind (old enough that no live writer owns
    them); returns how many. They are never read as entries, this only reclaims their disk space."""
    root = Path(cache_dir).expanduser()
    if not root.is_dir():
        return 0
    now, removed = time.time(), 0
    for path in root.glob("*/.*.part*"):
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except OSError:
            pass  # another process removed or renamed it meanwhile
    return removed


def _safe(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)


def _geometry_to_json(g: Geometry) -> dict:
    return {
        "shape": list(g.shape),
        "spacing_mm": g.spacing_mm.tolist(),
        "origin_mm": g.origin_mm.tolist(),
        "direction": g.direction.tolist(),
    }


def _geometry_from_json(d: dict) -> Geometry:
    return Geometry(tuple(d["shape"]), d["spacing_mm"], d["origin_mm"], d["direction"])

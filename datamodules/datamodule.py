"""``VertebraDataModule``: the one LightningDataModule every method trains and is evaluated on.

    config = DataConfig(source="phantom", options={"n_train": 16}).configure_for(method.data_requirements())
    dm = VertebraDataModule(config)
    trainer.fit(method, datamodule=dm); trainer.test(method, datamodule=dm)
    info = dm.case_info(case_id); world_mm = info.geometry.vox_to_world(prediction.centroids_vox)

``prepare_data`` (once per node) preprocesses every case into the cache (``num_workers`` processes);
``setup`` (every rank) only reads cache entries; epochs read the cached arrays, never the original files.
DDP: training shards come from Lightning's DistributedSampler (keep the Trainer default
``use_distributed_sampler=True``); val/test/predict loaders carry ``ShardedEvalSampler``, a DistributedSampler
subclass that Lightning leaves in place and that gives every case to exactly one rank with no padding
duplicates. Ranks may then run different numbers of eval steps: gather predictions at epoch end, never with
a per-step collective (``self.log(..., sync_dist=True)`` in ``test_step``).
"""

from __future__ import annotations

import dataclasses
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from spinebench.datamodules.cache_root import cache_root
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.labels import get_label_set
from spinebench.datamodules.preprocess import CacheEntry, PreprocessParams, ensure_entry, remove_stale_parts
from spinebench.datamodules.samples import Augmentation, CropDataset, ShardedEvalSampler, VolumeDataset, pad_collate
from spinebench.datamodules.sources import SPLITS, CaseRecord, DataSource, SourceListing, get_source


class SkippedCaseWarning(UserWarning):
    """A case that cannot be used (unreadable, no annotation, nothing inside the volume) was left out."""


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is preprocessed, and how samples are drawn.

    ``source`` names a registered data source and ``options`` are its typed options (its ``Options`` dataclass,
    or a mapping of them); in YAML they are ``data.source: NAME`` and the section ``data.NAME: {...}``
    (``to_dict``). The other fields map the ``data:`` section one to one.
    """

    source: str = "phantom"
    options: Any = None  # the source's Options (a mapping is checked and converted; None: its defaults)
    label_set: str = "default"
    spacing_mm: float = 2.0
    antialias: bool = True  # average blocks of voxels when downsampling by more than 2x (preprocess.PreprocessParams)
    cache_dir: str | None = None  # None: <cache root>/preprocessed (SPINEBENCH_CACHE, else the XDG cache folder)
    batch_size: int = 2
    num_workers: int = 0
    augment: bool = False
    rotation_deg: float = 10.0
    scale_range: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    sample_mode: Literal["volume", "crop"] = "crop"
    crop_size_vox: tuple[int, int, int] = (104, 80, 80)
    crops_per_case: int = 1
    crop_focus_prob: float = 0.9
    pad_multiple: int = 1
    heatmap_sigma_vox: float | None = None

    def __post_init__(self) -> None:
        source_cls = get_source(self.source)
        try:
            object.__setattr__(self, "options", source_cls.build_options(self.options))
        except TypeError as exc:
            raise InputError(f"data.{self.source}: {exc}") from None
        if self.sample_mode not in ("volume", "crop"):
            raise InputError(f"unknown data.sample_mode {self.sample_mode!r}; valid: volume, crop")
        object.__setattr__(self, "crop_size_vox", tuple(int(s) for s in self.crop_size_vox))
        get_label_set(self.label_set)
        for name in ("batch_size", "pad_multiple", "crops_per_case"):
            if getattr(self, name) < 1:
                raise InputError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise InputError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def configure_for(self, requirements) -> "DataConfig":
        """A copy set up for a method's ``DataRequirements`` (sample mode, crop size, padding, heatmap sigma)."""
        changes = {"sample_mode": requirements.sample_mode, "pad_multiple": requirements.pad_multiple,
                   "heatmap_sigma_vox": requirements.heatmap_sigma_vox}
        if requirements.crop_size_vox is not None:
            changes["crop_size_vox"] = tuple(requirements.crop_size_vox)
        return dataclasses.replace(self, **changes)

    def data_source(self) -> DataSource:
        """The configured source, set up for this data's spacing."""
        return get_source(self.source)(self.options, spacing_mm=self.spacing_mm)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: every field, with the source's options as the section named after the source."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "options":
                out[self.source] = dataclasses.asdict(self.options)
            else:
                out[f.name] = getattr(self, f.name)
        return out

    @property
    def cache_path(self) -> Path:
        """The preprocessing cache folder: ``cache_dir``, or ``<cache root>/preprocessed``."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else cache_root() / "preprocessed"

    @property
    def preprocess_params(self) -> PreprocessParams:
        return PreprocessParams(spacing_mm=float(self.spacing_mm), antialias=bool(self.antialias))

    @property
    def augmentation(self) -> Augmentation | None:
        if not self.augment:
            return None
        return Augmentation(self.rotation_deg, self.scale_range, self.intensity_scale, self.intensity_shift)


@dataclass(frozen=True)
class CaseInfo:
    """What the runner needs to evaluate one case: map voxel predictions on the preprocessed volume to world
    mm with ``geometry.vox_to_world`` and compare with ``centroids_world_mm`` (K, 3), NaN = not annotated."""

    case_id: str
    dataset: str
    split: str
    geometry: object  # Geometry of the preprocessed volume the method saw
    original_geometry: object  # Geometry of the original image file / generated phantom
    centroids_world_mm: np.ndarray
    patient: str  # scans of one patient share it (VerSe subject); the case id where nothing groups cases
    metadata: dict
    conditions: dict = field(default_factory=dict)  # the source's case conditions (records' meta_* columns)


def _build_one(args):
    """Process-pool worker: ensure one cache entry; returns (case_id, hit, error text or None). The worker loads
    the case with the source that the record names (a fork of this process knows every registered source)."""
    cache_dir, record, params = args
    try:
        _, hit = ensure_entry(cache_dir, record, params)
        return record.case_id, hit, None
    except (InputError, OSError, ValueError, RuntimeError) as exc:
        return record.case_id, False, str(exc)


class VertebraDataModule(L.LightningDataModule):
    """``requirements`` (a method's ``DataRequirements``) is applied with ``DataConfig.configure_for``; ``seed``
    seeds the training shuffle order (crops and augmentation follow torch's RNG, see ``samples``)."""

    def __init__(self, config: DataConfig | None = None, requirements=None, seed: int | None = None) -> None:
        super().__init__()
        config = config or DataConfig()
        self.config = config.configure_for(requirements) if requirements is not None else config
        self.seed = seed
        self.label_names: tuple[str, ...] = get_label_set(self.config.label_set).names
        self.entries: dict[str, list[CacheEntry]] = {s: [] for s in SPLITS}
        self._by_id: dict[str, CacheEntry] = {}
        self._warned: set[str] = set()
        self.data_report: dict = {}
        self._listing: SourceListing | None = None
        self._source: DataSource | None = None

    # --- records and cache ---------------------------------------------------------------------
    def records(self) -> list[CaseRecord]:
        if self._listing is None:
            self._listing = self.source.listing()
            self._check_records(self._listing.records)
        return self._listing.records

    @property
    def source(self) -> DataSource:
        if self._source is None:
            self._source = self.config.data_source()
        return self._source

    def _check_records(self, records: list[CaseRecord]) -> None:
        seen: set[str] = set()
        for r in records:
            where = f"data source {self.config.source!r}, case {r.case_id!r}"
            if r.split not in SPLITS:
                raise InputError(f"{where}: split {r.split!r} is not one of {', '.join(SPLITS)}")
            if r.case_id in seen:
                raise InputError(f"{where}: listed twice (case ids must be unique within a source)")
            seen.add(r.case_id)

    def prepare_data(self) -> None:
        """Preprocess every missing case into the cache; ``num_workers`` processes when > 0."""
        params, cache_dir = self.config.preprocess_params, self.config.cache_path
        remove_stale_parts(cache_dir)
        jobs = [(cache_dir, r, params) for r in self.records()]
        if self.config.num_workers > 0 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=self.config.num_workers) as pool:
                list(pool.map(_build_one, jobs))
        else:
            for job in jobs:
                _build_one(job)

    def setup(self, stage: str | None = None) -> None:
        if self.data_report:
            return  # already set up (fit then test reuse the same index)
        report = {"source": self.config.source, "cases": {s: 0 for s in SPLITS}, "skipped": [],
                  "cache_hits": 0, "cache_misses": 0}
        params = self.config.preprocess_params
        for record in self.records():
            try:
                entry, hit = ensure_entry(self.config.cache_path, record, params)
            except (InputError, OSError, ValueError, RuntimeError) as exc:
                self._skip(report, record, str(exc))
                continue
            report["cache_hits" if hit else "cache_misses"] += 1
            if not np.isfinite(entry.centroids_vox(self.label_names)).all(axis=1).any():
                self._skip(report, record, f"no annotated vertebra of label set {self.config.label_set!r} "
                                           "inside the preprocessed volume (no crop or volume target possible)")
                continue
            self.entries[record.split].append(entry)
            self._by_id[record.case_id] = entry
            report["cases"][record.split] += 1
        assert self._listing is not None
        report["missing_from_folder"] = list(self._listing.missing)
        report["unlisted"] = list(self._listing.unlisted)
        report["n_skipped"] = len(report["skipped"])
        if self._listing.missing:
            warnings.warn(f"{len(self._listing.missing)} case ids of the split lists were not found by data source "
                          f"{self.config.source!r} (first: {self._listing.missing[0]})", SkippedCaseWarning,
                          stacklevel=2)
        self.data_report = report
        if not self.entries["train"] and not self.entries["test"] and not self.entries["val"]:
            raise InputError(f"data source {self.config.source!r} ({self.source.options}) yielded no usable case; "
                             f"skipped: {report['n_skipped']}")

    def _skip(self, report: dict, record: CaseRecord, reason: str) -> None:
        report["skipped"].append({"case_id": record.case_id, "file": record.display_path, "split": record.split,
                                  "reason": reason})
        if record.case_id not in self._warned:
            self._warned.add(record.case_id)
            warnings.warn(f"skipping case {record.case_id} ({record.display_path}): {reason}", SkippedCaseWarning,
                          stacklevel=3)

    # --- accessors for the runner --------------------------------------------------------------
    def case_ids(self, split: str) -> list[str]:
        return [e.case_id for e in self.entries[split]]

    def case_info(self, case_id: str) -> CaseInfo:
        try:
            e = self._by_id[case_id]
        except KeyError:
            raise InputError(
                f"unknown case id {case_id!r}; call setup() first or pick one of case_ids(split)"
            ) from None
        return CaseInfo(e.case_id, e.dataset, e.split, e.geometry, e.original_geometry,
                        e.centroids_world_mm(self.label_names), str(e.metadata.get("patient", e.case_id)),
                        dict(e.metadata), self.source.conditions(e.metadata))

    def train_centroids_vox(self) -> np.ndarray:
        """(N, K, 3) true centroids of the training cases in voxel coords of their preprocessed volumes, NaN absent."""
        if not self.data_report:
            self.setup("fit")
        k = len(self.label_names)
        rows = [e.centroids_vox(self.label_names) for e in self.entries["train"]]
        return np.stack(rows) if rows else np.zeros((0, k, 3))

    # --- loaders -------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        c = self.config
        if not self.entries["train"]:
            raise InputError(f"data source {c.source!r} has no usable training case ({self.describe()})")
        if c.sample_mode == "crop":
            dataset = CropDataset(self.entries["train"], self.label_names, c.crop_size_vox, c.crops_per_case,
                                  c.crop_focus_prob, c.augmentation)
        else:
            dataset = VolumeDataset(self.entries["train"], self.label_names, c.pad_multiple, c.heatmap_sigma_vox,
                                    c.augmentation)
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        return DataLoader(dataset, batch_size=c.batch_size, shuffle=True, collate_fn=pad_collate, generator=generator,
                          num_workers=c.num_workers, persistent_workers=c.num_workers > 0, drop_last=False)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = VolumeDataset(self.entries[split], self.label_names)
        replicas, rank = self._world()
        return DataLoader(dataset, batch_size=1, sampler=ShardedEvalSampler(dataset, replicas, rank),
                          collate_fn=pad_collate, num_workers=self.config.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _world(self) -> tuple[int | None, int | None]:
        """(world size, rank) of the attached Trainer; (None, None) = ask torch.distributed when iterating."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.world_size), int(trainer.global_rank)
        return None, None

    def state_dict(self) -> dict:
        return {}

    def describe(self) -> str:
        r = self.data_report
        parts = [f"{s}={r['cases'][s]}" for s in SPLITS] if r else []
        return f"{self.config.source} ({', '.join(parts)}; skipped {r.get('n_skipped', 0) if r else '?'})"


__all__ = ["DataConfig", "VertebraDataModule", "CaseInfo", "ShardedEvalSampler", "SkippedCaseWarning"]

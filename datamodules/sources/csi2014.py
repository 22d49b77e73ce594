"""The ``csi2014`` source: CSI-2014 / SpineWeb dataset 2, ``<id>.nii.gz`` with ``<id>.lml`` beside it, anywhere
under ``root``. Split ``set2`` is the published 242 / 60 split shipped in ``datamodules/data/csi2014_set2_*.txt``
(from Payer's MedicalDataAugmentationTool-HeatmapRegression setup files); split lists replace it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spinebench.datamodules.cases import CaseRecord, SourceListing
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.sources.base import DataSource, register_source
from spinebench.datamodules.sources.example_data import write_example_case
from spinebench.datamodules.sources.files import existing_dir, strip_image_suffix
from spinebench.datamodules.splits import LEGACY_SPLIT_KEYS, SplitOptions, assign_splits, read_id_list

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SET2_LISTS = {"train": DATA_DIR / "csi2014_set2_train.txt", "test": DATA_DIR / "csi2014_set2_test.txt"}


@dataclass(frozen=True)
class Csi2014Options(SplitOptions):
    split: str = "set2"  # the published split; ignored when split lists are given


@register_source("csi2014")
class Csi2014Source(DataSource):
    """CSI-2014 / SpineWeb dataset 2: <id>.nii.gz + <id>.lml, published 242/60 split (set2)."""

    Options = Csi2014Options
    legacy_keys = {**LEGACY_SPLIT_KEYS, "csi2014_split": "split"}

    def case_records(self) -> SourceListing:
        o = self.options
        root = existing_dir(o.root, "csi2014")
        pairs = {}
        for image in sorted(root.rglob("*.nii*")):
            stem = strip_image_suffix(image.name)
            if stem is None:
                continue
            lml = image.with_name(stem + ".lml")
            pairs[stem] = (image, lml if lml.is_file() else None)
        fixed = None
        if not o.split_lists():
            if o.split != "set2":
                raise InputError(f"data.csi2014.split: unknown CSI-2014 split {o.split!r}; valid: set2 (published "
                                 "242/60), or give split lists")
            fixed = {i: s for s, path in SET2_LISTS.items() for i in read_id_list(path)}
        splits, extra = assign_splits(list(pairs), o.split_lists(), o.val_fraction, 0.0, o.split_seed, fixed=fixed)
        if fixed is not None:
            extra["missing"] = sorted(set(fixed) - set(pairs))
        records = [CaseRecord(i, "csi2014", splits[i], "csi2014", str(pairs[i][0]),
                              str(pairs[i][1]) if pairs[i][1] else None) for i in sorted(splits)]
        return SourceListing(records, extra["missing"], extra["unlisted"])

    @classmethod
    def example(cls, folder: Path) -> Csi2014Options:
        for split, path in SET2_LISTS.items():
            case = read_id_list(path)[0]
            write_example_case(folder / split / f"{case}.nii.gz", folder / split / f"{case}.lml")
        return Csi2014Options(root=str(folder))

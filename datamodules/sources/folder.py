"""The ``folder`` source: any volumes (``.nii[.gz]``, ``.nrrd``, ``.mha/.mhd``, DICOM series folders) with a
centroid file (``.json`` VerSe, ``.csv``, ``.lml``) or a vertebra label mask of the same case key, anywhere under
``root``; the mask's numbering is ``mask_labels`` (``datamodules.label_maps``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spinebench.datamodules.cases import CaseRecord, SourceListing
from spinebench.datamodules.ct_io import image_suffix
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.label_maps import MASK_LABEL_MAPS
from spinebench.datamodules.sources.base import DataSource, register_source
from spinebench.datamodules.sources.example_data import write_example_case
from spinebench.datamodules.sources.files import (
    annotation_index,
    case_key,
    existing_dir,
    find_annotation,
    is_dicom_folder,
    is_mask_name,
    optional_str,
)
from spinebench.datamodules.splits import LEGACY_SPLIT_KEYS, SplitOptions, assign_splits


@dataclass(frozen=True)
class FolderOptions(SplitOptions):
    test_fraction: float = 0.2
    mask_labels: str = "verse"  # numbering of vertebra masks: verse, spineps, totalsegmentator, ...

    def __post_init__(self) -> None:
        if self.mask_labels not in MASK_LABEL_MAPS:
            raise InputError(f"data.folder.mask_labels: unknown numbering {self.mask_labels!r}; "
                             f"valid: {', '.join(MASK_LABEL_MAPS)}")


@register_source("folder")
class FolderSource(DataSource):
    """Any volumes (NIfTI, NRRD, MHA, DICOM folders) with a centroid file or vertebra mask of the same name."""

    Options = FolderOptions
    legacy_keys = {**LEGACY_SPLIT_KEYS, "test_fraction": "test_fraction", "mask_labels": "mask_labels"}

    def case_records(self) -> SourceListing:
        o = self.options
        root = existing_dir(o.root, "folder")
        annotations = annotation_index(root)
        images: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            if path.name.startswith("."):
                continue
            is_image = path.is_file() and image_suffix(path) is not None and not is_mask_name(path.name)
            if is_image or (path.is_dir() and is_dicom_folder(path)):
                key = case_key(path.name)
                if key in images:
                    raise InputError(f"{path}: case {key} appears twice (also {images[key]}); rename one")
                images[key] = path
        splits, extra = assign_splits(list(images), o.split_lists(), o.val_fraction, o.test_fraction, o.split_seed)
        records = []
        for key in sorted(splits):
            image = images[key]
            ctd, mask = find_annotation(annotations, image, key)
            # the mask's numbering matters (and keys the cache) only when the centroids come from the mask
            params = (("mask_labels", o.mask_labels),) if ctd is None and mask and o.mask_labels != "verse" else ()
            records.append(CaseRecord(key, "folder", splits[key], "folder", str(image), optional_str(ctd),
                                      optional_str(mask), params=params))
        return SourceListing(records, extra["missing"], extra["unlisted"])

    @classmethod
    def example(cls, folder: Path) -> FolderOptions:
        write_example_case(folder / "a_ct.nii.gz", folder / "a.json")
        write_example_case(folder / "cases" / "b.mha", folder / "cases" / "b_seg-vert_msk.nii.gz")
        return FolderOptions(root=str(folder), test_fraction=0.5)

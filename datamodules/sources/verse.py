"""The ``verse`` source: VerSe 2019 / 2020, BIDS (``rawdata/sub-*/*_ct.nii.gz`` + ``derivatives/sub-*/*_ctd.json``
or ``*_seg-vert_msk.nii.gz``) or the subject-based layout (all files in one ``sub-*`` folder). The split comes
from the release folders (``dataset-verse19training``, ``dataset-02validation``, ``03_test``, ...), else from
split lists or fractions; scans of one subject share the ``patient`` metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spinebench.datamodules.cases import CaseRecord, SourceListing
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.sources.base import DataSource, register_source
from spinebench.datamodules.sources.example_data import write_example_case
from spinebench.datamodules.sources.files import annotation_index, case_key, existing_dir, find_annotation, optional_str
from spinebench.datamodules.splits import LEGACY_SPLIT_KEYS, SplitOptions, assign_splits


@dataclass(frozen=True)
class VerseOptions(SplitOptions):
    test_fraction: float = 0.2  # when the folders name no official split


@register_source("verse")
class VerseSource(DataSource):
    """VerSe 2019 / 2020, BIDS or subject-based layout; split from the release folders."""

    Options = VerseOptions
    legacy_keys = {**LEGACY_SPLIT_KEYS, "test_fraction": "test_fraction"}

    def case_records(self) -> SourceListing:
        o = self.options
        root = existing_dir(o.root, "verse")
        annotations = annotation_index(root)
        found: dict[str, tuple[Path, str | None, str]] = {}
        for image in sorted(root.rglob("*_ct.nii*")):
            if image.name.startswith(".") or "derivatives" in image.relative_to(root).parts:
                continue
            key = case_key(image.name)
            if key in found:
                raise InputError(f"{image}: case {key} appears twice (also {found[key][0]})")
            rel = image.relative_to(root).parts
            found[key] = (image, split_of_folders(rel), release_of_folders(rel))
        fixed = {k: s for k, (_, s, _) in found.items() if s is not None} or None
        if fixed is not None and len(fixed) < len(found):
            fixed = None  # mixed layout: fall back to fractions for all
        splits, extra = assign_splits(list(found), o.split_lists(), o.val_fraction, o.test_fraction, o.split_seed,
                                      fixed=fixed)
        records = []
        for key in sorted(splits):
            image, _, release = found[key]
            ctd, mask = find_annotation(annotations, image, key)
            subject = next((p for p in image.relative_to(root).parts if p.startswith("sub-")), key.split("_")[0])
            records.append(CaseRecord(key, release, splits[key], "verse", str(image), optional_str(ctd),
                                      optional_str(mask), metadata={"patient": subject.split("_")[0]}))
        return SourceListing(records, extra["missing"], extra["unlisted"])

    @classmethod
    def example(cls, folder: Path) -> VerseOptions:
        for subject, release in (("sub-verse901", "dataset-01training"), ("sub-verse902", "dataset-03test")):
            write_example_case(folder / release / "rawdata" / subject / f"{subject}_ct.nii.gz",
                               folder / release / "derivatives" / subject / f"{subject}_seg-vert_msk.nii.gz")
        return VerseOptions(root=str(folder))


def split_of_folders(parts: tuple[str, ...]) -> str | None:
    for part in reversed(parts[:-1]):
        p = part.lower()
        if "validation" in p or p.endswith("_val") or p == "val":
            return "val"
        if "test" in p:
            return "test"
        if "train" in p:
            return "train"
    return None


def release_of_folders(parts: tuple[str, ...]) -> str:
    joined = "/".join(parts).lower()
    if "verse19" in joined or "verse2019" in joined:
        return "verse2019"
    if "verse20" in joined or "verse2020" in joined or any(p.lower().startswith(("dataset-0", "0")) for p in parts):
        return "verse2020"
    return "verse"

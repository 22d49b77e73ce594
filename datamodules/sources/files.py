"""Cases stored as files: matching images with their annotation by file name, and reading an image with its
centroid file or vertebra mask (what ``DataSource.load_case`` does unless a source says otherwise).

Names: ``x_ct.nii.gz`` ~ ``x.json`` ~ ``x_seg-vert_msk.nii.gz`` ~ ``x_mask.nii.gz`` share the case key ``x``
(BIDS entities and role tokens are dropped); BIDS ``derivatives/sub-x/`` pairs with ``rawdata/sub-x/`` by folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinebench.datamodules.cases import CaseRecord, RawCase
from spinebench.datamodules.centroids import centroids_from_mask, read_centroids
from spinebench.datamodules.ct_io import image_suffix, read_image, read_sitk_image
from spinebench.datamodules.errors import InputError

_CENTROID_SUFFIXES = (".json", ".csv", ".lml")
# Name tokens (split on "_") that say what a file is rather than which case it belongs to.
_ROLE_TOKENS = {"ct", "img", "image", "msk", "mask", "seg", "label", "labels", "ctd", "centroids"}
_MASK_TOKENS = {"msk", "mask", "seg", "label", "labels"}


def load_annotated_image(record: CaseRecord) -> RawCase:
    """An image file with its centroid file, or with a vertebra label mask numbered as ``record.param("mask_labels",
    "verse")`` says. Raises ``InputError`` with the reason when the case cannot be used."""
    ct_hu, geometry = read_sitk_image(record.image_path)
    if record.centroids_path is not None:
        centroids = read_centroids(record.centroids_path, geometry=geometry)
    elif record.mask_path is not None:
        mask, mask_geometry = read_image(record.mask_path)
        if mask_geometry != geometry:
            raise InputError(f"{record.mask_path}: mask grid differs from its image {record.image_path}")
        labels = record.param("mask_labels", "verse")
        centroids = centroids_from_mask(mask, mask_geometry, source=record.mask_path, labels=labels)
    else:
        raise InputError(f"{record.image_path}: no centroid file or label mask found for this image")
    if len(centroids) == 0:
        raise InputError(f"{record.centroids_path or record.mask_path}: no annotated vertebra")
    meta = dict(record.metadata)
    meta["annotation"] = record.centroids_path or record.mask_path
    return RawCase(ct_hu, geometry, {n: np.asarray(centroids[n], float) for n in centroids}, meta)


def existing_dir(root, kind: str) -> Path:
    """``root`` as an existing folder, or an ``InputError`` naming the option ``data.<kind>.root``."""
    if root is None:
        raise InputError(f"data source {kind!r} needs data.{kind}.root (a folder)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: data root of source {kind!r} is not a folder")
    return root


def optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def strip_image_suffix(name: str) -> str | None:
    suffix = image_suffix(name)
    return None if suffix is None else name[: -len(suffix)]


def _tokens(name: str) -> list[str]:
    stem = strip_image_suffix(name)
    if stem is None:
        stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem.split("_")


def case_key(name: str) -> str:
    """Case key of a file name: BIDS/role tokens removed (``sub-x_seg-vert_msk`` and ``sub-x_ct`` -> ``sub-x``)."""
    tokens = [t for t in _tokens(name) if not t.lower().startswith("seg-")]
    while len(tokens) > 1 and tokens[-1].lower() in _ROLE_TOKENS:
        tokens.pop()
    return "_".join(tokens)


def is_mask_name(name: str) -> bool:
    tokens = [t.lower() for t in _tokens(name)]
    return any(t in _MASK_TOKENS or t.startswith("seg-") for t in tokens)


def is_dicom_folder(path: Path) -> bool:
    files = [p for p in path.iterdir() if p.is_file()]
    if not files or any(p.is_dir() for p in path.iterdir()):
        return False
    with open(files[0], "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def annotation_index(root: Path) -> dict[tuple[str, str], tuple[Path | None, Path | None]]:
    """(folder name, case key) and ("", case key) -> (centroid file, vertebra mask).

    The folder name lets BIDS ``derivatives/sub-x/`` pair with ``rawdata/sub-x/``. Subregion masks
    (``seg-subreg``) are not vertebra masks and are ignored; a centroid file wins over a mask.
    """
    out: dict[tuple[str, str], list] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        lower = path.name.lower()
        is_ctd = lower.endswith(_CENTROID_SUFFIXES) and not lower.endswith(".nii.gz")
        is_mask = strip_image_suffix(path.name) is not None and is_mask_name(path.name) and "subreg" not in lower
        if not (is_ctd or is_mask):
            continue
        key = case_key(path.name)
        for slot in ((path.parent.name, key), ("", key)):
            entry = out.setdefault(slot, [None, None])
            idx = 0 if is_ctd else 1
            if entry[idx] is None or (idx == 1 and "seg-vert" in lower):
                entry[idx] = path
    return {k: (v[0], v[1]) for k, v in out.items()}


def find_annotation(annotations: dict, image: Path, key: str) -> tuple[Path | None, Path | None]:
    """(centroid file, mask) of an image from ``annotation_index``: beside it by folder name first, else anywhere."""
    ctd, mask = annotations.get((image.parent.name, key), (None, None))
    if ctd is None and mask is None:
        ctd, mask = annotations.get(("", key), (None, None))
    return ctd, mask

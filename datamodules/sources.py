"""Case sources: which cases exist, which split each belongs to, and how to load one.

A source lists ``CaseRecord``s (cheap: file names only, nothing is read); ``load_case`` turns one record into
the CT in HU, its geometry and its annotated centroids in world mm. Four kinds:

- ``phantom``: cases generated from (seed, index) by ``datamodules.phantom``; no files. Train/val/test take
  disjoint index ranges at fixed offsets, so changing ``n_train`` never changes the test cases.
- ``csi2014``: a folder of ``<id>.nii.gz`` + ``<id>.lml`` (searched recursively); split "set2" is the published
  242/60 split shipped in ``datamodules/data/csi2014_set2_*.txt``, or user split lists.
- ``verse``: VerSe 2019/2020, either BIDS (``rawdata/sub-*/*_ct.nii.gz`` + ``derivatives/sub-*/*_ctd.json``) or
  the subject-based layout (both files in one ``sub-*`` folder); the split comes from the release folder
  (``dataset-verse19training``, ``dataset-02validation``, ``03_test``...), else from split lists / fractions.
- ``folder``: any volumes (NIfTI, NRRD, MHA/MHD, DICOM series folders) with a centroid file (.json/.csv/.lml)
  or a VerSe-numbered vertebra label mask of the same name stem (``x_ct.nii.gz`` ~ ``x.json`` ~
  ``x_seg-vert_msk.nii.gz`` ~ ``x_mask.nii.gz``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spinebench.datamodules.errors import InputError

SPLITS: tuple[str, ...] = ("train", "val", "test")
DATA_DIR = Path(__file__).resolve().parent / "data"
# Phantom case index = offset of the split + i (fixed, so the test cases do not depend on n_train / n_val).
PHANTOM_INDEX_OFFSET: dict[str, int] = {"train": 0, "val": 100_000, "test": 200_000}
_CENTROID_SUFFIXES = (".json", ".csv", ".lml")
# Name tokens (split on "_") that say what a file is rather than which case it belongs to.
_ROLE_TOKENS = {"ct", "img", "image", "msk", "mask", "seg", "label", "labels", "ctd", "centroids"}
_MASK_TOKENS = {"msk", "mask", "seg", "label", "labels"}


@dataclass(frozen=True)
class CaseRecord:
    """One case of a source: where its data come from (files or phantom arguments) and its split."""

    case_id: str
    dataset: str  # "phantom", "csi2014", "verse2019", "verse2020", "verse", "folder"
    split: str  # "train", "val" or "test"
    image_path: str | None = None  # a file or a DICOM folder
    centroids_path: str | None = None
    mask_path: str | None = None  # vertebra label mask, used when there is no centroid file
    mask_labels: str = "verse"  # the mask's numbering (datamodules.label_maps)
    phantom_seed: int | None = None
    phantom_index: int | None = None
    phantom_overrides: tuple[tuple[str, Any], ...] = ()
    metadata: dict = field(default_factory=dict, compare=False)

    @property
    def display_path(self) -> str:
        """What a warning names: the image file, or the phantom arguments."""
        if self.image_path is not None:
            return self.image_path
        return f"phantom(seed={self.phantom_seed}, index={self.phantom_index})"

    def fingerprint(self) -> dict:
        """What the preprocessed result depends on: path + size + mtime of every source file, or the phantom
        arguments and the generator's source bytes. ``os.stat`` only -- no file is opened."""
        if self.image_path is None:
            return {
                "phantom": [self.phantom_seed, self.phantom_index, [list(kv) for kv in self.phantom_overrides]],
                "generator_sha1": _phantom_code_sha1(),
            }
        files = {}
        for role, path in (("image", self.image_path), ("centroids", self.centroids_path), ("mask", self.mask_path)):
            if path is not None:
                files[role] = _stat_fingerprint(Path(path))
        if self.mask_path is not None and self.centroids_path is None and self.mask_labels != "verse":
            files["mask_labels"] = self.mask_labels  # the centroids depend on it (VerSe keys stay as before)
        return files


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


def _stat_fingerprint(path: Path) -> list:
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


_PHANTOM_SHA1: str | None = None


def _phantom_code_sha1() -> str:
    """Hash of the generator's source: editing the phantom invalidates cached phantom cases."""
    global _PHANTOM_SHA1
    if _PHANTOM_SHA1 is None:
        h = hashlib.sha1()
        for name in ("phantom.py", "phantom_anatomy.py", "phantom_artifacts.py"):
            p = Path(__file__).resolve().parent / name
            if p.is_file():
                h.update(p.read_bytes())
        _PHANTOM_SHA1 = h.hexdigest()
    return _PHANTOM_SHA1


# --- loading -------------------------------------------------------------------------------------


def load_case(record: CaseRecord) -> RawCase:
    """Read (or generate) one case. Raises ``InputError`` with the reason when the case cannot be used."""
    if record.image_path is None:
        return _load_phantom(record)
    from spinebench.datamodules.centroids import centroids_from_mask, read_centroids
    from spinebench.datamodules.ct_io import read_image, read_sitk_image

    ct_hu, geometry = read_sitk_image(record.image_path)
    if record.centroids_path is not None:
        centroids = read_centroids(record.centroids_path, geometry=geometry)
    elif record.mask_path is not None:
        mask, mask_geometry = read_image(record.mask_path)
        if mask_geometry != geometry:
            raise InputError(f"{record.mask_path}: mask grid differs from its image {record.image_path}")
        centroids = centroids_from_mask(mask, mask_geometry, source=record.mask_path, labels=record.mask_labels)
    else:
        raise InputError(f"{record.image_path}: no centroid file or label mask found for this image")
    if len(centroids) == 0:
        raise InputError(f"{record.centroids_path or record.mask_path}: no annotated vertebra")
    meta = dict(record.metadata)
    meta["annotation"] = record.centroids_path or record.mask_path
    return RawCase(ct_hu, geometry, {n: np.asarray(centroids[n], float) for n in centroids}, meta)


def _load_phantom(record: CaseRecord) -> RawCase:
    from spinebench.datamodules import phantom

    config = phantom.PhantomConfig(**dict(record.phantom_overrides))
    case = phantom.generate_case(record.phantom_seed, record.phantom_index, config)
    centroids = case.centroids_mm
    names = list(centroids.keys())
    meta = dict(record.metadata)
    meta.update(_jsonable(getattr(case, "metadata", {}) or {}))
    return RawCase(np.asarray(case.ct_hu), case.geometry, {n: np.asarray(centroids[n], float) for n in names}, meta)


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


# --- splits --------------------------------------------------------------------------------------


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Case ids, one per line; blank lines and ``#`` comments ignored."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read split list ({exc.strerror or exc})") from None
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def assign_splits(
    ids: list[str],
    split_lists: dict[str, str | os.PathLike] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fixed: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Split of each id -> (``{id: split}``, ``{"missing": [...], "unlisted": [...]}``).

    Precedence: user ``split_lists`` (ids not listed are left out), else ``fixed`` (official splits; ``val_fraction``
    of the training ids become validation), else a seeded shuffle into test/val/train by the fractions.
    """
    present = set(ids)
    extra: dict[str, list[str]] = {"missing": [], "unlisted": []}
    if split_lists:
        unknown = set(split_lists) - set(SPLITS)
        if unknown:
            raise InputError(f"unknown split name(s) {sorted(unknown)} in split lists; valid: {', '.join(SPLITS)}")
        out: dict[str, str] = {}
        for split, path in split_lists.items():
            for case_id in read_id_list(path):
                if case_id in out and out[case_id] != split:
                    raise InputError(f"{path}: case {case_id} is also listed for split {out[case_id]!r}")
                if case_id in present:
                    out[case_id] = split
                else:
                    extra["missing"].append(case_id)
        extra["unlisted"] = sorted(present - set(out))
        return out, extra
    if fixed is not None:
        out = {i: fixed[i] for i in ids if i in fixed}
        extra["unlisted"] = sorted(present - set(out))
        if val_fraction > 0:
            train = sorted(i for i, s in out.items() if s == "train")
            for i in _shuffled(train, seed)[: int(round(val_fraction * len(train)))]:
                out[i] = "val"
        return out, extra
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(f"val_fraction {val_fraction} + test_fraction {test_fraction} must lie in [0, 1)")
    order = _shuffled(sorted(present), seed)
    n_test = int(round(test_fraction * len(order)))
    n_val = int(round(val_fraction * len(order)))
    out = {i: "test" for i in order[:n_test]}
    out.update({i: "val" for i in order[n_test : n_test + n_val]})
    out.update({i: "train" for i in order[n_test + n_val :]})
    return out, extra


def _shuffled(ids: list[str], seed: int) -> list[str]:
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


# --- sources -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceListing:
    records: list[CaseRecord]
    missing: list[str]  # ids named by a split list but not found in the folder
    unlisted: list[str]  # cases found but in no split


def phantom_records(n_train: int, n_val: int, n_test: int, seed: int, overrides: dict | None = None) -> SourceListing:
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (overrides or {}).items()))
    from spinebench.datamodules import phantom

    try:
        config = phantom.PhantomConfig(**dict(items))  # fail at start-up, naming the bad key
    except TypeError as exc:
        valid = ", ".join(phantom.PhantomConfig.__dataclass_fields__)
        raise InputError(f"bad phantom setting ({exc}); valid keys: {valid}") from None
    phantom.check_resources(config)  # and a spacing this machine cannot generate
    records = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n < 0:
            raise InputError(f"phantom {split} size must be >= 0, got {n}")
        for i in range(n):
            index = PHANTOM_INDEX_OFFSET[split] + i
            records.append(
                CaseRecord(f"phantom-s{seed}-{index:04d}", "phantom", split, phantom_seed=seed, phantom_index=index,
                           phantom_overrides=items)
            )
    return SourceListing(records, [], [])


def csi2014_records(root, split: str = "set2", split_lists=None, val_fraction=0.0, seed=0) -> SourceListing:
    """CSI-2014 / SpineWeb dataset 2: ``<id>.nii.gz`` with ``<id>.lml`` beside it, anywhere under ``root``."""
    root = _existing_dir(root, "csi2014")
    pairs = {}
    for image in sorted(root.rglob("*.nii*")):
        stem = _strip_image_suffix(image.name)
        if stem is None:
            continue
        lml = image.with_name(stem + ".lml")
        pairs[stem] = (image, lml if lml.is_file() else None)
    fixed = None
    if not split_lists:
        if split != "set2":
            raise InputError(f"unknown CSI-2014 split {split!r}; valid: set2 (published 242/60), or give split lists")
        fixed = {i: "train" for i in read_id_list(DATA_DIR / "csi2014_set2_train.txt")}
        fixed.update({i: "test" for i in read_id_list(DATA_DIR / "csi2014_set2_test.txt")})
    splits, extra = assign_splits(list(pairs), split_lists, val_fraction, 0.0, seed, fixed=fixed)
    if fixed is not None:
        extra["missing"] = sorted(set(fixed) - set(pairs))
    records = [
        CaseRecord(i, "csi2014", splits[i], str(pairs[i][0]), str(pairs[i][1]) if pairs[i][1] else None)
        for i in sorted(splits)
    ]
    return SourceListing(records, extra["missing"], extra["unlisted"])


def verse_records(root, split_lists=None, val_fraction=0.0, test_fraction=0.2, seed=0) -> SourceListing:
    """VerSe 2019/2020, BIDS (rawdata/derivatives) or subject-based layout, official split folders honoured."""
    root = _existing_dir(root, "verse")
    annotations = _annotation_index(root)
    found: dict[str, tuple[Path, str | None, str]] = {}
    for image in sorted(root.rglob("*_ct.nii*")):
        if image.name.startswith(".") or "derivatives" in image.relative_to(root).parts:
            continue
        key = _case_key(image.name)
        if key in found:
            raise InputError(f"{image}: case {key} appears twice (also {found[key][0]})")
        rel = image.relative_to(root).parts
        found[key] = (image, _split_of_folders(rel), _release_of_folders(rel))
    fixed = {k: s for k, (_, s, _) in found.items() if s is not None} or None
    if fixed is not None and len(fixed) < len(found):
        fixed = None  # mixed layout: fall back to fractions for all
    splits, extra = assign_splits(list(found), split_lists, val_fraction, test_fraction, seed, fixed=fixed)
    records = []
    for key in sorted(splits):
        image, _, release = found[key]
        ctd, mask = annotations.get((image.parent.name, key), (None, None))
        if ctd is None and mask is None:
            ctd, mask = annotations.get(("", key), (None, None))
        subject = next((p for p in image.relative_to(root).parts if p.startswith("sub-")), key.split("_")[0])
        records.append(CaseRecord(key, release, splits[key], str(image), _opt(ctd), _opt(mask),
                                  metadata={"patient": subject.split("_")[0]}))
    return SourceListing(records, extra["missing"], extra["unlisted"])


def folder_records(root, split_lists=None, val_fraction=0.0, test_fraction=0.2, seed=0,
                   mask_labels: str = "verse") -> SourceListing:  # fmt: skip
    """Any folder of volumes; annotation = centroid file or vertebra mask with the same case key."""
    from spinebench.datamodules.ct_io import image_suffix

    root = _existing_dir(root, "folder")
    annotations = _annotation_index(root)
    images: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.name.startswith("."):
            continue
        is_image = path.is_file() and image_suffix(path) is not None and not _is_mask_name(path.name)
        if path.is_dir() and _is_dicom_folder(path):
            is_image = True
        if is_image:
            key = _case_key(path.name)
            if key in images:
                raise InputError(f"{path}: case {key} appears twice (also {images[key]}); rename one")
            images[key] = path
    splits, extra = assign_splits(list(images), split_lists, val_fraction, test_fraction, seed)
    records = []
    for key in sorted(splits):
        image = images[key]
        ctd, mask = annotations.get((image.parent.name, key), (None, None))
        if ctd is None and mask is None:
            ctd, mask = annotations.get(("", key), (None, None))
        records.append(CaseRecord(key, "folder", splits[key], str(image), _opt(ctd), _opt(mask),
                                  mask_labels=mask_labels))
    return SourceListing(records, extra["missing"], extra["unlisted"])


# --- file-name matching ----------------------------------------------------------------------------


def _existing_dir(root, kind: str) -> Path:
    if root is None:
        raise InputError(f"data source {kind!r} needs data.root (a folder)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: data root of source {kind!r} is not a folder")
    return root


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _strip_image_suffix(name: str) -> str | None:
    from spinebench.datamodules.ct_io import image_suffix

    suffix = image_suffix(name)
    return None if suffix is None else name[: -len(suffix)]


def _tokens(name: str) -> list[str]:
    stem = _strip_image_suffix(name)
    if stem is None:
        stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem.split("_")


def _case_key(name: str) -> str:
    """Case key of a file name: BIDS/role tokens removed (``sub-x_seg-vert_msk`` and ``sub-x_ct`` -> ``sub-x``)."""
    tokens = [t for t in _tokens(name) if not t.lower().startswith("seg-")]
    while len(tokens) > 1 and tokens[-1].lower() in _ROLE_TOKENS:
        tokens.pop()
    return "_".join(tokens)


def _is_mask_name(name: str) -> bool:
    tokens = [t.lower() for t in _tokens(name)]
    return any(t in _MASK_TOKENS or t.startswith("seg-") for t in tokens)


def _is_dicom_folder(path: Path) -> bool:
    files = [p for p in path.iterdir() if p.is_file()]
    if not files or any(p.is_dir() for p in path.iterdir()):
        return False
    with open(files[0], "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _annotation_index(root: Path) -> dict[tuple[str, str], tuple[Path | None, Path | None]]:
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
        is_mask = _strip_image_suffix(path.name) is not None and _is_mask_name(path.name) and "subreg" not in lower
        if not (is_ctd or is_mask):
            continue
        key = _case_key(path.name)
        for slot in ((path.parent.name, key), ("", key)):
            entry = out.setdefault(slot, [None, None])
            idx = 0 if is_ctd else 1
            if entry[idx] is None or (idx == 1 and "seg-vert" in lower):
                entry[idx] = path
    return {k: (v[0], v[1]) for k, v in out.items()}


def _split_of_folders(parts: tuple[str, ...]) -> str | None:
    for part in reversed(parts[:-1]):
        p = part.lower()
        if "validation" in p or p.endswith("_val") or p == "val":
            return "val"
        if "test" in p:
            return "test"
        if "train" in p:
            return "train"
    return None


def _release_of_folders(parts: tuple[str, ...]) -> str:
    joined = "/".join(parts).lower()
    if "verse19" in joined or "verse2019" in joined:
        return "verse2019"
    if "verse20" in joined or "verse2020" in joined or any(p.lower().startswith(("dataset-0", "0")) for p in parts):
        return "verse2020"
    return "verse"

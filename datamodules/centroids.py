"""Vertebra centroids: one in-memory type (vertebra name -> LPS mm), mask centres of mass, and file I/O.

File formats (VerSe ``*_ctd.json``, CSI-2014 ``.lml``, CSV) are parsed and written in
``datamodules.centroid_formats``; ``read_centroids`` / ``write_centroids`` here choose the format by suffix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from spinebench.datamodules import centroid_formats
from spinebench.datamodules.atomic import write_text_atomic
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.label_maps import MASK_LABEL_MAPS, is_other_structure, vertebra_names
from spinebench.datamodules.labels import ALL_NAMES, VERSE_ID_OF, LabelSet, check_name

# VerSe/SPINEPS subregion labels of the vertebral body: 49 corpus border, 50 corpus.
BODY_SUBREGION_LABELS: tuple[int, ...] = (49, 50)

CENTROID_FORMATS: tuple[str, ...] = ("verse", "csv", "lml")
_FORMAT_OF_SUFFIX = {".json": "verse", ".csv": "csv", ".lml": "lml"}


class Centroids(Mapping):
    """Ordered mapping vertebra name -> (3,) float64 LPS mm, always in anatomical (superior -> inferior) order.

    Names are checked against the label schema; coordinates must be finite; a name may occur once.
    """

    __slots__ = ("_mm",)
    __hash__ = None  # mutable-looking values (arrays): not hashable

    def __init__(self, items: Mapping[str, Iterable[float]] | Iterable[tuple[str, Iterable[float]]] = ()) -> None:
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        mm: dict[str, np.ndarray] = {}
        for name, xyz in pairs:
            check_name(name)
            if name in mm:
                raise InputError(f"vertebra {name} is given twice")
            point = np.asarray(xyz, dtype=np.float64)
            if point.shape != (3,) or not np.all(np.isfinite(point)):
                raise InputError(f"vertebra {name}: expected three finite coordinates, got {xyz!r}")
            point.flags.writeable = False
            mm[name] = point
        self._mm = {n: mm[n] for n in sorted(mm, key=ALL_NAMES.index)}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._mm[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mm)

    def __len__(self) -> int:
        return len(self._mm)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Centroids):
            return NotImplemented
        return list(self) == list(other) and all(np.array_equal(self[n], other[n]) for n in self)

    def __repr__(self) -> str:
        body = ", ".join(f"{n}: ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f})" for n, p in self._mm.items())
        return f"Centroids({{{body}}})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._mm)

    def allclose(self, other: Centroids, atol_mm: float = 1e-6) -> bool:
        """Same names, and every centroid within ``atol_mm`` of the other's (per coordinate)."""
        return list(self) == list(other) and all(np.allclose(self[n], other[n], rtol=0, atol=atol_mm) for n in self)

    def to_array(self, label_set: LabelSet, drop_missing: bool = False) -> np.ndarray:
        """(K, 3) LPS mm in ``label_set`` channel order, NaN rows for absent vertebrae.

        A centroid whose name is not in ``label_set`` raises, unless ``drop_missing``.
        """
        out = np.full((len(label_set), 3), np.nan)
        for name, point in self._mm.items():
            if name in label_set:
                out[label_set.index(name)] = point
            elif not drop_missing:
                label_set.index(name)  # raises with the valid names listed
        return out

    @classmethod
    def from_array(cls, array_mm: np.ndarray, label_set: LabelSet) -> Centroids:
        """From a (K, 3) LPS mm array in ``label_set`` order; rows holding NaN are absent vertebrae."""
        array_mm = np.asarray(array_mm, dtype=np.float64)
        if array_mm.shape != (len(label_set), 3):
            raise ValueError(f"expected an array of shape ({len(label_set)}, 3), got {array_mm.shape}")
        return cls((n, array_mm[k]) for k, n in enumerate(label_set.names) if np.all(np.isfinite(array_mm[k])))

    def verse_numbered(self) -> Centroids:
        """The centroids a VerSe json can hold: every vertebra but S2, which VerSe does not number."""
        return Centroids((n, p) for n, p in self._mm.items() if n in VERSE_ID_OF)

    def outside(self, geometry: Geometry, margin_vox: float = 0.5) -> list[str]:
        """Names of centroids that fall outside ``geometry``'s voxel grid (centres +- ``margin_vox``)."""
        if not self._mm:
            return []
        inside = geometry.contains_vox(geometry.world_to_vox(np.stack(list(self._mm.values()))), margin=margin_vox)
        return [n for n, ok in zip(self._mm, inside) if not ok]


def check_inside(centroids: Centroids, geometry: Geometry, source: str | os.PathLike) -> None:
    """Raise ``InputError`` naming ``source`` if any centroid lies outside the image grid."""
    outside = centroids.outside(geometry)
    if outside:
        p = centroids[outside[0]]
        raise InputError(
            f"{source}: centroid {outside[0]} at ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) mm lies outside the image"
            + (f" ({len(outside)} centroids outside: {', '.join(outside)})" if len(outside) > 1 else "")
        )


# --- centroids from label masks ------------------------------------------------------------------


def centroids_from_mask(
    mask: np.ndarray,
    geometry: Geometry,
    subregion_mask: np.ndarray | None = None,
    source: str | os.PathLike = "mask",
    labels: str = "verse",
) -> Centroids:
    """Centre of mass (LPS mm) of every vertebra label of a mask, numbered by ``labels``: ``verse`` (1-7 C, 8-19 T,
    20-25 L, 26 S1, 28 T13), ``spineps``, ``totalsegmentator`` (v2) or ``totalsegmentator-v1``
    (``datamodules.label_maps``).

    With ``subregion_mask`` (VerSe/SPINEPS subregions on the same grid) the centroid is that of the vertebral
    body: the voxels of the vertebra whose subregion is 49 or 50. Vertebrae without body voxels are left out.
    Values the map knows as other structures (coccyx, organs, discs) are ignored; a value the map does not know,
    or a mask with no vertebra label, raises ``InputError`` naming the values.
    """
    names = vertebra_names(labels)
    mask_labels = _integer_labels(mask, source)
    if mask_labels.shape != geometry.shape:
        raise InputError(f"{source}: mask shape {mask_labels.shape} does not match its geometry {geometry.shape}")
    values = [int(v) for v in np.unique(mask_labels) if v != 0]
    foreign = [v for v in values if v not in names and not is_other_structure(labels, v)]
    if foreign:
        shown = ", ".join(map(str, foreign[:10])) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        hint = "; is it another tool's label map? (--labels / data.folder.mask_labels: " + ", ".join(MASK_LABEL_MAPS) + ")"
        raise InputError(f"{source}: mask values {shown} are not {labels} labels{hint}")
    present = [v for v in values if v in names]
    if not present:
        raise InputError(
            f"{source}: mask holds no vertebra labels of the {labels} map; found values {values[:10] or 'none (empty mask)'}"
        )
    vertebrae = np.where(np.isin(mask_labels, present), mask_labels, 0)  # other structures dropped
    if subregion_mask is not None:
        subregion_mask = np.asarray(subregion_mask)
        if subregion_mask.shape != vertebrae.shape:
            raise InputError(f"{source}: subregion mask shape {subregion_mask.shape} differs from {vertebrae.shape}")
        vertebrae = np.where(np.isin(subregion_mask, BODY_SUBREGION_LABELS), vertebrae, 0)
        present = [v for v in present if np.any(vertebrae == v)] if vertebrae.any() else []
        if not present:
            raise InputError(f"{source}: no vertebra voxel carries a body subregion label {BODY_SUBREGION_LABELS}")
    # Centre of mass inside the labels' bounding box: scipy builds coordinate grids of the input's size.
    box = _bounding_box(vertebrae)
    from scipy import ndimage  # here: 0.15 s of import that every other command (and --help) would pay

    coms_vox = ndimage.center_of_mass(vertebrae[box] > 0, labels=vertebrae[box], index=present)
    offset = np.array([s.start for s in box], dtype=np.float64)
    coms_mm = geometry.vox_to_world(np.asarray(coms_vox, dtype=np.float64).reshape(-1, 3) + offset)
    return Centroids((names[v], coms_mm[i]) for i, v in enumerate(present))


def _integer_labels(mask: np.ndarray, source) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"{source}: expected a 3D label mask, got {mask.ndim}D")
    if np.issubdtype(mask.dtype, np.integer):
        return mask
    if np.issubdtype(mask.dtype, np.floating):
        rounded = np.rint(mask)
        if np.all(rounded == mask):  # float-stored label maps (some tools write float64)
            return rounded.astype(np.int32)
    raise InputError(f"{source}: a label mask must hold integer labels, got {mask.dtype} values")


def _bounding_box(labels: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(labels.ndim):
        other = tuple(a for a in range(labels.ndim) if a != axis)
        hit = np.flatnonzero(np.any(labels, axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


# --- files ---------------------------------------------------------------------------------------


def centroid_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt`` if given (checked), else the format implied by the suffix (.json verse, .csv, .lml). A named format
    that another format's suffix contradicts (CSV into ``o.json``) is refused: the file would lie about itself."""
    suffix = Path(path).suffix.lower()
    if fmt is not None:
        if fmt not in CENTROID_FORMATS:
            raise InputError(f"unknown centroid format {fmt!r}; valid formats: {', '.join(CENTROID_FORMATS)}")
        implied = _FORMAT_OF_SUFFIX.get(suffix)
        if implied is not None and implied != fmt:
            raise InputError(f"{path}: the suffix {suffix!r} means {implied}, not the format {fmt} asked for")
        return fmt
    if suffix not in _FORMAT_OF_SUFFIX:
        raise InputError(
            f"{path}: cannot tell the centroid format from the suffix {suffix or '(none)'!r}; "
            f"use .json (verse), .csv or .lml, or name the format ({', '.join(CENTROID_FORMATS)})"
        )
    return _FORMAT_OF_SUFFIX[suffix]


def read_centroids(path: str | os.PathLike, geometry: Geometry | None = None, fmt: str | None = None) -> Centroids:
    """Read a centroid file. VerSe json needs the image ``geometry``; with a geometry every centroid must lie
    inside the image."""
    path = Path(path)
    fmt = centroid_format(path, fmt)
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read text file ({exc})") from None
    try:
        centroids = Centroids(centroid_formats.parse(text, fmt, geometry, source=path))
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None
    if geometry is not None:
        check_inside(centroids, geometry, path)
    return centroids


def write_centroids(
    path: str | os.PathLike,
    centroids: Centroids,
    fmt: str | None = None,
    geometry: Geometry | None = None,
    orientation: str | None = None,
) -> None:
    """Write atomically. VerSe json needs ``geometry`` (voxel indices in ``orientation``, default the image's own);
    with a geometry every centroid must lie inside the image."""
    fmt = centroid_format(path, fmt)
    if geometry is not None:
        check_inside(centroids, geometry, path)
    text = centroid_formats.format_text(centroids, fmt, geometry, orientation=orientation, source=path)
    write_text_atomic(path, text)

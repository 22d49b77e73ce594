"""Centroid file formats, parsed from and formatted to text. Use ``datamodules.centroids.read_centroids`` /
``write_centroids``, which pick the format from the suffix and write atomically.

- ``verse``: VerSe subject-based ``*_ctd.json``. A list whose first entry is ``{"direction": ["P", "I", "R"]}``
  (axis codes of the file axes x, y, z), then ``{"label": verse_id, "X": .., "Y": .., "Z": ..}``: fractional voxel
  indices of the image after reorientation to those axis codes (VerSe ``data_utilities`` convention, flipped axis
  index = n - 1 - i). Converting to and from mm therefore needs the image geometry.
- ``lml``: CSI-2014 landmark list. A header line, then ``id<TAB>name<TAB>x<TAB>y<TAB>z`` with id = 10 x the 1-based
  index in C1..S2. Coordinates are read and written as **mm in the image's world frame as SimpleITK reports it
  (ITK/DICOM LPS)**; the challenge does not document its frame, so pair ``.lml`` files with images read the same way.
- ``csv``: header ``label,x,y,z``, then one vertebra name and LPS mm per row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from spinebench.datamodules.orientation import orientation_code, reoriented_geometry
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.labels import check_name, lml_id, name_from_lml_id, name_from_verse_id, verse_id

# Digits kept when writing: 1e-4 mm / 1e-6 voxel, far below any annotation's precision.
_MM_DECIMALS = 4
_VOX_DECIMALS = 6


def parse(text: str, fmt: str, geometry: Geometry | None, source: str | os.PathLike
          ) -> list[tuple[str, tuple[float, float, float]]]:
    """Parse ``text`` in ``fmt`` -> (vertebra name, LPS mm) pairs in file order. Errors name ``source``."""
    if fmt == "verse":
        return _parse_verse(text, geometry, source)
    if fmt == "lml":
        return _parse_lml(text, source)
    if fmt == "csv":
        return _parse_csv(text, source)
    raise InputError(f"{source}: unknown centroid format {fmt!r}")


def format_text(centroids, fmt: str, geometry: Geometry | None, orientation: str | None, source) -> str:
    """Centroids -> file text in ``fmt``."""
    if fmt == "verse":
        return _format_verse(centroids, geometry, orientation, source)
    try:
        if fmt == "lml":
            return _format_lml(centroids)
        if fmt == "csv":
            return _format_csv(centroids)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    raise InputError(f"{source}: unknown centroid format {fmt!r}")


def _number(value, source, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: {where}: {value!r} is not a number") from None
    if not math.isfinite(out):
        raise InputError(f"{source}: {where}: coordinate {value!r} is not finite")
    return out


# --- VerSe json ----------------------------------------------------------------------------------


def _parse_verse(text: str, geometry: Geometry | None, source) -> list[tuple[str, tuple[float, float, float]]]:
    if geometry is None:
        raise InputError(f"{source}: VerSe centroids are voxel indices; the image is needed to read them (--image)")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{source}: a VerSe centroid file is a JSON list starting with a direction entry")
    first = entries[0]
    if not isinstance(first, dict) or "direction" not in first:
        example = json.dumps({"direction": ["P", "I", "R"]})
        raise InputError(f"{source}: first entry must be the direction entry, e.g. {example}")
    code = first["direction"]
    if not isinstance(code, (list, str)) or not all(isinstance(c, str) for c in code):
        raise InputError(f"{source}: direction entry {code!r} is not a list of three axis letters")
    try:
        oriented = reoriented_geometry(geometry, "".join(code))
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    pairs = []
    for k, entry in enumerate(entries[1:], start=2):
        where = f"entry {k}"
        if not isinstance(entry, dict) or not {"label", "X", "Y", "Z"} <= entry.keys():
            raise InputError(f"{source}: {where} must have keys label, X, Y, Z; got {entry!r}")
        if isinstance(entry["label"], bool) or not isinstance(entry["label"], (int, float)):
            raise InputError(f"{source}: {where}: label {entry['label']!r} is not a VerSe vertebra id")
        try:
            name = name_from_verse_id(entry["label"])
        except InputError as exc:
            raise InputError(f"{source}: {where}: {exc}") from None
        # X, Y, Z index the file axes x, y, z = numpy axes 2, 1, 0 of the reoriented image.
        vox = np.array([_number(entry[c], source, where) for c in ("Z", "Y", "X")])
        pairs.append((name, tuple(oriented.vox_to_world(vox))))
    return pairs


def _format_verse(centroids, geometry: Geometry | None, orientation: str | None, source) -> str:
    if geometry is None:
        raise InputError(f"{source}: VerSe centroids are voxel indices; the image is needed to write them (--image)")
    code = orientation or orientation_code(geometry)
    oriented = reoriented_geometry(geometry, code)
    entries: list[dict] = [{"direction": list(code.upper())}]
    for name, point in centroids.items():
        try:
            vid = verse_id(name)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        z, y, x = oriented.world_to_vox(point)
        entries.append({"label": vid, "X": round(float(x), _VOX_DECIMALS), "Y": round(float(y), _VOX_DECIMALS),
                        "Z": round(float(z), _VOX_DECIMALS)})
    # One entry per line, like the VerSe release files.
    return "[\n" + ",\n".join("  " + json.dumps(e) for e in entries) + "\n]\n"


# --- CSI-2014 .lml -------------------------------------------------------------------------------

_LML_HEADER = "#id\tname\tx\ty\tz\t(spinebench: mm in the image world frame, ITK LPS)"


def _parse_lml(text: str, source) -> list[tuple[str, tuple[float, float, float]]]:
    lines = text.splitlines()
    if not lines:
        raise InputError(f"{source}: empty .lml file (expected a header line, then id, name, x, y, z rows)")
    pairs = []
    for number, line in enumerate(lines[1:], start=2):  # line 1 is the header
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if len(fields) != 5:
            raise InputError(
                f"{source}: line {number}: expected 5 fields id, name, x, y, z; got {len(fields)}: {line!r}"
            )
        where = f"line {number}"
        try:
            ident = int(fields[0])
        except ValueError:
            raise InputError(f"{source}: {where}: id {fields[0]!r} is not an integer") from None
        try:
            name = name_from_lml_id(ident)
        except InputError as exc:
            raise InputError(f"{source}: {where}: {exc}") from None
        if fields[1] and fields[1] != name and _is_schema_name(fields[1]):
            raise InputError(f"{source}: {where}: id {ident} is {name} but the name column says {fields[1]}")
        pairs.append((name, tuple(_number(v, source, where) for v in fields[2:])))
    return pairs


def _is_schema_name(text: str) -> bool:
    try:
        check_name(text)
    except InputError:
        return False
    return True


def _format_lml(centroids) -> str:
    rows = [_LML_HEADER]
    for name, p in centroids.items():
        rows.append("\t".join([str(lml_id(name)), name, *(f"{v:.{_MM_DECIMALS}f}" for v in p)]))
    return "\n".join(rows) + "\n"


# --- CSV -----------------------------------------------------------------------------------------


def _parse_csv(text: str, source) -> list[tuple[str, tuple[float, float, float]]]:
    pairs = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        row = [f.strip() for f in row]
        if number == 1 and row[0].lower() == "label":
            continue
        where = f"line {number}"
        if len(row) != 4:
            raise InputError(f"{source}: {where}: expected 4 fields label, x, y, z; got {len(row)}: {','.join(row)!r}")
        try:
            name = check_name(row[0])
        except InputError as exc:
            raise InputError(f"{source}: {where}: {exc}") from None
        pairs.append((name, tuple(_number(v, source, where) for v in row[1:])))
    return pairs


def _format_csv(centroids) -> str:
    rows = ["label,x,y,z"]
    for name, p in centroids.items():
        rows.append(",".join([name, *(f"{v:.{_MM_DECIMALS}f}" for v in p)]))
    return "\n".join(rows) + "\n"

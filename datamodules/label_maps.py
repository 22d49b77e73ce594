"""Vertebra label maps of the segmentation tools users already run, for centres of mass of their masks.

- ``verse``: VerSe numbering (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum = S1, 28 T13); 27 (coccyx) ignored.
- ``spineps``: SPINEPS / TPTBox instance masks, vertebrae in VerSe numbering; 27 and the values from 100 on
  (intervertebral discs 100 + id, endplates 200 + id) ignored.
- ``totalsegmentator``: TotalSegmentator v2, task ``total`` (``map_to_binary.py``): 26 S1, 27-31 L5-L1, 32-43
  T12-T1, 44-50 C7-C1; its other classes (organs, 25 sacrum) ignored.
- ``totalsegmentator-v1``: TotalSegmentator v1 (104 classes): 18-22 L5-L1, 23-34 T12-T1, 35-41 C7-C1 (no S1);
  its other classes ignored.

A mask value that a map neither names as a vertebra nor knows as another structure is an error naming it.
"""

from __future__ import annotations

from spinebench.datamodules.errors import InputError
from spinebench.datamodules.labels import NAME_OF_VERSE_ID

MASK_LABEL_MAPS: tuple[str, ...] = ("verse", "spineps", "totalsegmentator", "totalsegmentator-v1")

_CERVICAL = [f"C{i}" for i in range(1, 8)]
_THORACIC = [f"T{i}" for i in range(1, 13)]
_LUMBAR = [f"L{i}" for i in range(1, 6)]
# caudal to cranial, as TotalSegmentator numbers them
_TS_ORDER = ["S1", *_LUMBAR[::-1], *_THORACIC[::-1], *_CERVICAL[::-1]]
_TS_V2 = {26 + i: name for i, name in enumerate(_TS_ORDER)}  # 26 S1 ... 50 C1
_TS_V1 = {18 + i: name for i, name in enumerate(_TS_ORDER[1:])}  # 18 L5 ... 41 C1
_TS_V2_CLASSES, _TS_V1_CLASSES = 117, 104


def vertebra_names(label_map: str) -> dict[int, str]:
    """Mask value -> vertebra name under ``label_map``."""
    check_label_map(label_map)
    if label_map in ("verse", "spineps"):
        return dict(NAME_OF_VERSE_ID)
    return dict(_TS_V2 if label_map == "totalsegmentator" else _TS_V1)


def is_other_structure(label_map: str, value: int) -> bool:
    """A value the map knows as something other than a vertebra (ignored when computing centroids)."""
    if label_map == "verse":
        return value == 27
    if label_map == "spineps":
        return value == 27 or value >= 100
    return 1 <= value <= (_TS_V2_CLASSES if label_map == "totalsegmentator" else _TS_V1_CLASSES)


def check_label_map(label_map: str) -> None:
    if label_map not in MASK_LABEL_MAPS:
        raise InputError(f"unknown mask label map {label_map!r}; valid: {', '.join(MASK_LABEL_MAPS)}")

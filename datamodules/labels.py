"""The vertebra label schema: the one source of truth for names, regions and file-format ids.

Names follow the anatomical order C1…C7, T1…T12, (T13), L1…L5, (L6), S1, S2. A *label set* is an
ordered subset of these names; channel ``k`` of every model output and row ``k`` of every
``(K, 3)`` centroid array is ``label_set.names[k]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from spinebench.datamodules.errors import UnknownLabelError

CERVICAL = tuple(f"C{i}" for i in range(1, 8))
THORACIC = tuple(f"T{i}" for i in range(1, 13))
LUMBAR = tuple(f"L{i}" for i in range(1, 6))
SACRAL = ("S1", "S2")
TRANSITIONAL = ("T13", "L6")

# Every name the schema knows, in anatomical (superior -> inferior) order.
ALL_NAMES: tuple[str, ...] = CERVICAL + THORACIC + ("T13",) + LUMBAR + ("L6",) + SACRAL

REGIONS: tuple[str, ...] = ("cervical", "thoracic", "lumbar", "sacral")
REGION_OF: dict[str, str] = {
    **{n: "cervical" for n in CERVICAL},
    **{n: "thoracic" for n in THORACIC + ("T13",)},
    **{n: "lumbar" for n in LUMBAR + ("L6",)},
    **{n: "sacral" for n in SACRAL},
}

# VerSe numbering: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum (stored as S1), 28 T13.
VERSE_ID_OF: dict[str, int] = {
    **{f"C{i}": i for i in range(1, 8)},
    **{f"T{i}": 7 + i for i in range(1, 13)},
    **{f"L{i}": 19 + i for i in range(1, 7)},
    "S1": 26,
    "T13": 28,
}
NAME_OF_VERSE_ID: dict[int, str] = {v: k for k, v in VERSE_ID_OF.items()}

DEFAULT_NAMES: tuple[str, ...] = CERVICAL + THORACIC + LUMBAR + SACRAL  # K = 26

# CSI-2014 .lml ids: 10 x the 1-based index in the 26-label C1..S2 order.
LML_ID_OF: dict[str, int] = {n: 10 * (i + 1) for i, n in enumerate(DEFAULT_NAMES)}
NAME_OF_LML_ID: dict[int, str] = {v: k for k, v in LML_ID_OF.items()}


def check_name(name: str) -> str:
    """Return ``name`` if the schema knows it, else raise with the list of valid names."""
    if name not in REGION_OF:
        raise UnknownLabelError(f"unknown vertebra label {name!r}; valid labels: {', '.join(ALL_NAMES)}")
    return name


def region_of(name: str) -> str:
    return REGION_OF[check_name(name)]


def name_from_verse_id(verse_id: int) -> str:
    try:
        return NAME_OF_VERSE_ID[int(verse_id)]
    except (KeyError, ValueError, TypeError):
        valid = ", ".join(str(i) for i in sorted(NAME_OF_VERSE_ID))
        raise UnknownLabelError(f"unknown VerSe vertebra id {verse_id!r}; valid ids: {valid}") from None


def verse_id(name: str) -> int:
    check_name(name)
    if name not in VERSE_ID_OF:
        raise UnknownLabelError(f"vertebra {name} has no VerSe id (VerSe labels the sacrum as one vertebra, 26 = S1)")
    return VERSE_ID_OF[name]


def name_from_lml_id(lml_id: int) -> str:
    try:
        return NAME_OF_LML_ID[int(lml_id)]
    except (KeyError, ValueError, TypeError):
        raise UnknownLabelError(
            f"unknown CSI-2014 .lml vertebra id {lml_id!r}; valid ids: 10, 20, ..., 260 (10 x index of C1..S2)"
        ) from None


def lml_id(name: str) -> int:
    check_name(name)
    if name not in LML_ID_OF:
        raise UnknownLabelError(f"vertebra {name} has no CSI-2014 .lml id (only C1..S2 are numbered)")
    return LML_ID_OF[name]


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of vertebra names; its order is the channel order of every method."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        for n in self.names:
            check_name(n)
        order = [ALL_NAMES.index(n) for n in self.names]
        if order != sorted(set(order)):
            raise UnknownLabelError(f"label set must list distinct names in anatomical order, got {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    @cached_property
    def _index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def index(self, name: str) -> int:
        """Channel index of ``name``; unknown or absent names raise with the valid ones listed."""
        check_name(name)
        try:
            return self._index[name]
        except KeyError:
            raise UnknownLabelError(
                f"vertebra {name} is not in this label set; valid labels: {', '.join(self.names)}"
            ) from None

    @property
    def regions(self) -> tuple[str, ...]:
        """Region of each channel, aligned with ``names``."""
        return tuple(REGION_OF[n] for n in self.names)


# Named label sets a config may choose with ``data.label_set``.
LABEL_SETS: dict[str, LabelSet] = {
    "default": LabelSet(DEFAULT_NAMES),  # C1..S2, K = 26
    "transitional": LabelSet(ALL_NAMES),  # adds T13 and L6, K = 28
}


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise UnknownLabelError(f"unknown label set {name!r}; valid label sets: {', '.join(LABEL_SETS)}") from None

"""Splits of file-based sources: the options every such source shares (split lists, fractions, seed) and the
assignment of case ids to train / val / test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinebench.datamodules.cases import SPLITS
from spinebench.datamodules.errors import InputError


@dataclass(frozen=True)
class SplitOptions:
    """Options of a source whose cases are files: where they are and how they are split.

    Split lists (files of case ids, one per line) override any split; ids listed but not found are reported,
    cases found but not listed are left out. ``val_fraction`` takes that share of the training ids (official
    splits) or of all ids (no official split) into validation. Sources without an official split add
    ``test_fraction``.
    """

    root: str | None = None
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    val_fraction: float = 0.0
    split_seed: int = 0

    def split_lists(self) -> dict[str, str]:
        return {s: p for s, p in (("train", self.train_list), ("val", self.val_list), ("test", self.test_list)) if p}


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
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1 and val_fraction + test_fraction <= 1):
        raise InputError(f"val_fraction {val_fraction} + test_fraction {test_fraction} must lie in [0, 1] "
                         "(test_fraction 1.0: every case is a test case)")
    order = _shuffled(sorted(present), seed)
    n_test = int(round(test_fraction * len(order)))
    n_val = int(round(val_fraction * len(order)))
    out = {i: "test" for i in order[:n_test]}
    out.update({i: "val" for i in order[n_test : n_test + n_val]})
    out.update({i: "train" for i in order[n_test + n_val :]})
    return out, extra


def _shuffled(ids: list[str], seed: int) -> list[str]:
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


# Keys of the flat ``data:`` section of spinebench 0.1 that are now options of every file-based source.
LEGACY_SPLIT_KEYS: dict[str, str] = {k: k for k in ("root", "train_list", "val_list", "test_list", "val_fraction",
                                                    "split_seed")}

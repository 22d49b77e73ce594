"""torchmetrics shells over the one metric core, ``leaderboard.metrics`` (numpy; the leaderboard imports no torch).

``update`` computes a batch's per-scan, per-region counts with the core (``CaseStats.from_arrays``) and keeps them
with the matched distances as ``"cat"`` states; ``compute`` hands them back to the core's ``aggregate`` and
``median_error_mm``. So every number is the core's, and syncing over processes (or ``merge_state``) gives what one
process that saw every scan would give. The runner's callers gather whole records first (they write them) and
compute with ``sync_on_compute=False``; the states stay syncable for a user's own DDP loop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from spinebench.leaderboard import metrics as core
from spinebench.leaderboard.metrics import (
    AVERAGES, DENOMINATORS, IDENTIFICATION_THRESHOLD_MM, REGION_COLUMNS, SEARCH_RULES, CaseStats,
)  # fmt: skip

# The per-scan counts kept per region, in the order of the states' last axis (fields of ``CaseStats``).
COUNT_NAMES: tuple[str, ...] = (
    "n_annotated", "n_matched", "n_identified", "misses", "false_positives", "sum_mm", "sumsq_mm",
)


def _numpy(x: Tensor, dtype) -> np.ndarray:
    return x.detach().to("cpu", torch.float64 if dtype is float else torch.bool).numpy()


class LocalizationIdentification(Metric):
    """Localization error (mean, std, median; mm), Id.Rate, misses and false positives per region.

    ``update(true_mm (B, K, 3), pred_mm (B, K, 3), pred_present (B, K))`` with NaN rows in ``true_mm`` for
    vertebrae not annotated. ``compute()`` returns ``{stat: (R,)}`` over ``REGION_COLUMNS``; ``flat(prefix)``
    the same as ``{"<prefix>id_rate": ..., "<prefix>thoracic/id_rate": ...}`` floats for loggers.
    """

    is_differentiable = False
    higher_is_better = None  # id_rate higher, errors lower
    full_state_update = False

    def __init__(
        self,
        names: tuple[str, ...] | list[str],
        search: str = "glocker",
        denominator: str = "annotated",
        average: str = "micro",
        threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for value, valid, what in ((search, SEARCH_RULES, "search"), (denominator, DENOMINATORS, "denominator"),
                                   (average, AVERAGES, "average")):
            if value not in valid:
                raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
        self.names = tuple(names)
        self.search, self.denominator, self.average = search, denominator, average
        self.threshold_mm = float(threshold_mm)
        self.add_state("scan_counts", [], dist_reduce_fx="cat")  # (N, R, len(COUNT_NAMES))
        self.add_state("scan_distances", [], dist_reduce_fx="cat")  # (N, K), NaN = not matched

    def update(self, true_mm: Tensor, pred_mm: Tensor, pred_present: Tensor) -> None:
        if true_mm.shape[-2:] != (len(self.names), 3) or pred_mm.shape != true_mm.shape:
            raise ValueError(f"expected (B, {len(self.names)}, 3) centroids, got {tuple(true_mm.shape)} and "
                             f"{tuple(pred_mm.shape)}")
        stats = CaseStats.from_arrays(_numpy(true_mm, float), _numpy(pred_mm, float), _numpy(pred_present, bool),
                                      self.names, search=self.search, threshold_mm=self.threshold_mm)
        counts = np.stack([getattr(stats, name) for name in COUNT_NAMES], axis=-1)
        self.scan_counts.append(torch.as_tensor(counts, device=self.device))
        self.scan_distances.append(torch.as_tensor(stats.distances_mm, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        # After a DDP sync a list state is already one concatenated tensor: test its length, not its truth value.
        k, r = len(self.names), len(REGION_COLUMNS)
        counts = (dim_zero_cat(self.scan_counts).cpu().numpy() if len(self.scan_counts)
                  else np.zeros((0, r, len(COUNT_NAMES))))
        dist = dim_zero_cat(self.scan_distances).cpu().numpy() if len(self.scan_distances) else np.zeros((0, k))
        stats = CaseStats(**{name: counts[..., i] for i, name in enumerate(COUNT_NAMES)}, distances_mm=dist,
                          masks=core.region_masks(self.names))
        out = core.aggregate(stats, average=self.average, denominator=self.denominator)
        out["median_mm"] = core.median_error_mm(stats, average=self.average)
        return {name: torch.as_tensor(values, dtype=torch.float64) for name, values in out.items()}

    def flat(self, prefix: str = "") -> dict[str, float]:
        out = {}
        for stat, values in self.compute().items():
            for r, region in enumerate(REGION_COLUMNS):
                out[f"{prefix}{stat}" if region == "all" else f"{prefix}{region}/{stat}"] = float(values[r])
        return out


class MultiLabelMeanAP(Metric):
    """Mean average precision of presence scores over labels (``leaderboard.metrics.mean_average_precision``):
    ``update(true_present (B, K), scores (B, K))``; a NaN score (a label the method did not score) makes it NaN."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("true_present", [], dist_reduce_fx="cat")
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, true_present: Tensor, scores: Tensor) -> None:
        if true_present.shape != scores.shape or true_present.ndim != 2:
            raise ValueError(f"expected (B, K) presence and scores, got {tuple(true_present.shape)}, "
                             f"{tuple(scores.shape)}")
        self.true_present.append(true_present.bool())
        self.scores.append(scores.double())

    def compute(self) -> Tensor:
        if not len(self.true_present):
            return torch.tensor(float("nan"), dtype=torch.float64)
        value = core.mean_average_precision(_numpy(dim_zero_cat(self.true_present), bool),
                                            _numpy(dim_zero_cat(self.scores), float))
        return torch.tensor(value, dtype=torch.float64)

"""torchmetrics shells over ``benchmark.metrics.functional``: DDP-safe states, per-region results.

States are per-region count sums (``dist_reduce_fx="sum"``, for micro averages) and per-scan counts and distances
(``"cat"``, for macro averages and medians), so syncing over processes and ``merge_state`` give the same result
as one process that saw every scan.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from spinebench.benchmark.metrics import functional as F
from spinebench.leaderboard.metrics import AVERAGES, DENOMINATORS, IDENTIFICATION_THRESHOLD_MM, REGION_COLUMNS, SEARCH_RULES


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
        self.register_buffer("masks", F.region_masks(self.names), persistent=False)
        shape = (len(REGION_COLUMNS), len(F.COUNT_NAMES))
        self.add_state("counts_sum", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("scan_counts", [], dist_reduce_fx="cat")
        self.add_state("scan_distances", [], dist_reduce_fx="cat")

    def update(self, true_mm: Tensor, pred_mm: Tensor, pred_present: Tensor) -> None:
        if true_mm.shape[-2:] != (len(self.names), 3) or pred_mm.shape != true_mm.shape:
            raise ValueError(f"expected (B, {len(self.names)}, 3) centroids, got {tuple(true_mm.shape)} and "
                             f"{tuple(pred_mm.shape)}")
        counts, dist = F.case_counts(true_mm.double(), pred_mm.double(), pred_present, self.masks.to(true_mm.device),
                                     self.search, self.threshold_mm)
        self.counts_sum += counts.sum(0)
        self.scan_counts.append(counts)
        self.scan_distances.append(dist)

    def compute(self) -> dict[str, Tensor]:
        empty = self.counts_sum.new_zeros((0,) + self.counts_sum.shape)
        # After a DDP sync a list state is already one concatenated tensor: test its length, not its truth value.
        counts = dim_zero_cat(self.scan_counts) if len(self.scan_counts) else empty
        masks = self.masks.to(counts.device)
        if self.average == "micro":
            out = F.aggregate(self.counts_sum.unsqueeze(0), "micro", self.denominator)
        else:
            out = F.aggregate(counts, "macro", self.denominator)
        dist = dim_zero_cat(self.scan_distances) if len(self.scan_distances) else counts.new_zeros((0, len(self.names)))
        out["median_mm"] = F.median_error_mm(dist, masks, self.average)
        return out

    def flat(self, prefix: str = "") -> dict[str, float]:
        out = {}
        for stat, values in self.compute().items():
            for r, region in enumerate(REGION_COLUMNS):
                out[f"{prefix}{stat}" if region == "all" else f"{prefix}{region}/{stat}"] = float(values[r])
        return out


class MultiLabelMeanAP(Metric):
    """Mean average precision of presence scores over labels: ``update(true_present (B, K), scores (B, K))``."""

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
        if not self.true_present:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return F.mean_average_precision(dim_zero_cat(self.true_present), dim_zero_cat(self.scores))

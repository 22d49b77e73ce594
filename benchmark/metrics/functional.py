"""Metric maths on torch tensors for in-training and test evaluation (the conventions of ``leaderboard.metrics``).

Shapes: ``true_mm, pred_mm (..., K, 3)`` in mm, NaN rows for vertebrae not annotated; ``pred_present (..., K)``.
The conventions (Glocker search, strict < 20 mm, denominators, micro/macro, regions, mAP) are documented in
``leaderboard.metrics``, whose numpy implementation is the reference the records and leaderboard use; the
tests check that both give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import Tensor

from spinebench.leaderboard.metrics import (
    AVERAGES,
    DENOMINATORS,
    IDENTIFICATION_THRESHOLD_MM,
    REGION_COLUMNS,
    SEARCH_RULES,
)
from spinebench.leaderboard.metrics import region_masks as _region_masks_np

# Per-scan, per-region counts that every statistic is computed from (order of ``case_counts``' last axis).
COUNT_NAMES: tuple[str, ...] = (
    "n_annotated", "n_matched", "n_identified", "misses", "false_positives", "sum_mm", "sumsq_mm",
)


def _check(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def region_masks(names: tuple[str, ...] | list[str], device: torch.device | None = None) -> Tensor:
    """``(R, K)`` bool over ``REGION_COLUMNS`` (all, cervical, thoracic, lumbar, sacral)."""
    return torch.as_tensor(_region_masks_np(tuple(names)), device=device)


def _predicted(pred_mm: Tensor, pred_present: Tensor) -> Tensor:
    return pred_present.bool() & torch.isfinite(pred_mm).all(-1)


def localization_distances_mm(true_mm: Tensor, pred_mm: Tensor, pred_present: Tensor) -> Tensor:
    """``(..., K)`` Euclidean distance for vertebrae annotated and predicted, NaN elsewhere."""
    matched = torch.isfinite(true_mm).all(-1) & _predicted(pred_mm, pred_present)
    dist = torch.linalg.vector_norm(pred_mm - true_mm, dim=-1)
    return torch.where(matched, dist, torch.full_like(dist, float("nan")))


def identified(
    true_mm: Tensor,
    pred_mm: Tensor,
    pred_present: Tensor,
    search: str = "glocker",
    threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
) -> Tensor:
    """``(..., K)`` bool: matched, within ``threshold_mm`` (``<``; ``<=`` for ``search="verse"``, as the VerSe code)
    and its closest true centroid is its own."""
    _check(search, SEARCH_RULES, "closest-centroid search")
    annotated = torch.isfinite(true_mm).all(-1)
    predicted = _predicted(pred_mm, pred_present)
    candidates = annotated & predicted if search == "verse" else annotated
    pairwise = torch.linalg.vector_norm(pred_mm.unsqueeze(-2) - true_mm.unsqueeze(-3), dim=-1)  # (..., K, K)
    pairwise = torch.where(candidates.unsqueeze(-2), pairwise, torch.full_like(pairwise, float("inf")))
    own = torch.diagonal(pairwise, dim1=-2, dim2=-1)
    closest_is_own = own <= pairwise.amin(-1)
    within = own <= threshold_mm if search == "verse" else own < threshold_mm
    return annotated & predicted & within & closest_is_own


def case_counts(
    true_mm: Tensor,
    pred_mm: Tensor,
    pred_present: Tensor,
    masks: Tensor,
    search: str = "glocker",
    threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
) -> tuple[Tensor, Tensor]:
    """Per-scan counts ``(N, R, len(COUNT_NAMES))`` float64 and distances ``(N, K)`` of a batch of N scans."""
    annotated = torch.isfinite(true_mm).all(-1)
    predicted = _predicted(pred_mm, pred_present)
    dist = localization_distances_mm(true_mm, pred_mm, pred_present)
    hit = identified(true_mm, pred_mm, pred_present, search, threshold_mm)
    matched = torch.isfinite(dist)
    d0 = torch.where(matched, dist, torch.zeros_like(dist)).double()
    per_vertebra = torch.stack(
        [annotated.double(), matched.double(), hit.double(), (annotated & ~predicted).double(),
         (~annotated & predicted).double(), d0, d0**2], dim=-1,
    )  # (N, K, C)
    # (N, 1, K, C) * (1, R, K, 1) summed over K; a plain reduction, not a BLAS product: BLAS threads cost far
    # more than the few hundred multiply-adds here.
    counts = (per_vertebra.unsqueeze(1) * masks.double().unsqueeze(0).unsqueeze(-1)).sum(2)
    return counts, dist


def _div(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def _stats_from_counts(c: Tensor, denominator: str) -> dict[str, Tensor]:
    """Statistics from counts ``(..., R, C)``."""
    get = {name: c[..., i] for i, name in enumerate(COUNT_NAMES)}
    mean = _div(get["sum_mm"], get["n_matched"])
    var = (_div(get["sumsq_mm"], get["n_matched"]) - mean**2).clamp_min(0.0)
    den = get["n_annotated"] if denominator == "annotated" else get["n_matched"]
    return {
        "mean_mm": mean, "std_mm": var.sqrt(), "id_rate": _div(get["n_identified"], den),
        "misses": get["misses"], "false_positives": get["false_positives"],
        "n_annotated": get["n_annotated"], "n_matched": get["n_matched"],
    }


def _nanmean(values: Tensor, dim: int = 0) -> Tensor:
    defined = torch.isfinite(values)
    total = torch.where(defined, values, torch.zeros_like(values)).sum(dim)
    return _div(total, defined.sum(dim).to(values.dtype))


def aggregate(counts: Tensor, average: str = "micro", denominator: str = "annotated") -> dict[str, Tensor]:
    """Test-set statistics ``{name: (R,)}`` from per-scan counts ``(N, R, C)`` (see ``leaderboard.metrics``)."""
    _check(average, AVERAGES, "average")
    _check(denominator, DENOMINATORS, "identification denominator")
    if average == "micro":
        return _stats_from_counts(counts.sum(0), denominator)
    per_scan = _stats_from_counts(counts, denominator)
    return {name: _nanmean(v) if name in ("mean_mm", "std_mm", "id_rate") else v.mean(0)
            for name, v in per_scan.items()}


def median_error_mm(distances: Tensor, masks: Tensor, average: str = "micro") -> Tensor:
    """``(R,)`` median of the matched distances ``(N, K)`` (micro) or mean over scans of per-scan medians (macro).

    The median of an even count is the mean of the two middle values (as ``numpy.median``).
    """
    _check(average, AVERAGES, "average")

    def med(x: Tensor) -> Tensor:
        x = x[torch.isfinite(x)].sort().values
        if x.numel() == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
        n = x.numel()
        return (x[(n - 1) // 2].double() + x[n // 2].double()) / 2.0

    out = []
    for mask in masks:
        sub = distances[:, mask]
        if average == "micro":
            out.append(med(sub.reshape(-1)))
        else:
            out.append(_nanmean(torch.stack([med(row) for row in sub])) if sub.shape[0] else med(sub.reshape(-1)))
    return torch.stack(out)


def mean_average_precision(true_present: Tensor, scores: Tensor) -> Tensor:
    """Mean over labels with at least one annotated scan of sklearn's average precision of ``scores (N, K)``."""
    y = true_present.detach().cpu().numpy().astype(bool)
    s = scores.detach().cpu().double().numpy()
    ap = [average_precision_score(y[:, k], s[:, k]) for k in range(y.shape[1]) if y[:, k].any()]
    return torch.tensor(float(np.mean(ap)) if ap else float("nan"), dtype=torch.float64)


def localization_identification(
    true_mm: Tensor,
    pred_mm: Tensor,
    pred_present: Tensor,
    names: tuple[str, ...] | list[str],
    *,
    search: str = "glocker",
    denominator: str = "annotated",
    average: str = "micro",
    threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
) -> dict[str, Tensor]:
    """All per-region statistics of N scans ``(N, K, 3)``: ``{name: (R,)}`` incl. ``median_mm``."""
    masks = region_masks(names, device=true_mm.device)
    counts, dist = case_counts(true_mm, pred_mm, pred_present, masks, search, threshold_mm)
    out = aggregate(counts, average, denominator)
    out["median_mm"] = median_error_mm(dist, masks, average)
    return out


__all__ = [
    "COUNT_NAMES", "REGION_COLUMNS", "region_masks", "localization_distances_mm", "identified", "case_counts",
    "aggregate", "median_error_mm", "mean_average_precision", "localization_identification",
]

"""From records to per-method results: every metric recomputed from the coordinates, with bootstrap intervals.

A *scan* is one (run, seed, case) prediction of a method; a method's seeds and runs on the same dataset are
pooled. Intervals and tests resample patients (``patient`` column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spinebench.datamodules.labels import ALL_NAMES
from spinebench.datamodules.resources import require_memory
from spinebench.leaderboard import metrics as M
from spinebench.leaderboard import stats as S
from spinebench.leaderboard.errors import LeaderboardInputError
from spinebench.leaderboard.failures import FailureSummary, summarize_failures
from spinebench.leaderboard.schema import COORD_COLUMNS, META_PREFIX, Records

EFFICIENCY_COLUMNS = ("seconds_per_case", "params", "train_peak_memory_mb", "peak_memory_mb")
MAX_CONDITION_VALUES = 8


@dataclass(frozen=True)
class Conventions:
    """Metric conventions and bootstrap settings of one leaderboard (defaults: the papers' conventions)."""

    search: str = "glocker"
    denominator: str = "annotated"
    average: str = "micro"
    threshold_mm: float = M.IDENTIFICATION_THRESHOLD_MM
    n_boot: int = S.DEFAULT_BOOTSTRAP_SAMPLES
    seed: int = S.DEFAULT_BOOTSTRAP_SEED

    def __post_init__(self) -> None:
        for value, valid, what in ((self.search, M.SEARCH_RULES, "search"),
                                   (self.denominator, M.DENOMINATORS, "denominator"),
                                   (self.average, M.AVERAGES, "average")):
            if value not in valid:
                raise LeaderboardInputError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
        if not self.threshold_mm > 0 or self.n_boot < 10:
            raise LeaderboardInputError("threshold_mm must be > 0 and n_boot >= 10")

    def describe(self) -> str:
        search = ("closest true centroid searched over all annotated vertebrae (Glocker et al.)"
                  if self.search == "glocker" else
                  "closest true centroid searched over vertebrae both annotated and predicted (VerSe code)")
        den = "all annotated vertebrae (misses count as failures)" if self.denominator == "annotated" else \
            "matched vertebrae only"
        avg = "pooled over all vertebrae of the test set (micro)" if self.average == "micro" else \
            "computed per scan, then averaged over scans (macro)"
        rule = "<" if self.search == "glocker" else "<="
        return (f"Id.Rate: identified when the distance is {rule} {self.threshold_mm:g} mm and the {search} "
                f"(the papers' rule: < {self.threshold_mm:g} mm over all annotated vertebrae; the VerSe code's: "
                f"<= {self.threshold_mm:g} mm over vertebrae both annotated and predicted); "
                f"denominator: {den}. Statistics {avg}. Mean/Std/Median: localization error in mm over matched "
                f"vertebrae (std ddof=0). Intervals (small type; in brackets in Markdown): 95 % patient-level "
                f"bootstrap interval ({self.n_boot} draws, seed {self.seed}). p: paired patient-level bootstrap "
                f"against the best method of the column, Holm-corrected over the methods.")


@dataclass
class MethodScans:
    """One method's scans on one dataset, as ``(N, K)`` arrays over ``names`` (anatomical order)."""

    dataset: str
    method: str
    order: tuple[int, str]
    names: tuple[str, ...]
    scan_keys: list[tuple[str, int, str]]
    patients: np.ndarray  # (N,) object
    true_mm: np.ndarray  # (N, K, 3)
    pred_mm: np.ndarray
    pred_present: np.ndarray  # (N, K) bool
    scores: np.ndarray  # (N, K) float
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) str per meta column
    efficiency: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) float per efficiency column

    def subset(self, mask: np.ndarray) -> MethodScans:
        return MethodScans(
            self.dataset, self.method, self.order, self.names, [k for k, m in zip(self.scan_keys, mask) if m],
            self.patients[mask], self.true_mm[mask], self.pred_mm[mask], self.pred_present[mask],
            self.scores[mask], {k: v[mask] for k, v in self.meta.items()},
            {k: v[mask] for k, v in self.efficiency.items()},
        )

    def case_stats(self, conv: Conventions) -> M.CaseStats:
        return M.CaseStats.from_arrays(self.true_mm, self.pred_mm, self.pred_present, self.names,
                                       search=conv.search, threshold_mm=conv.threshold_mm)


def group_scans(records: Records) -> dict[str, list[MethodScans]]:
    """``{dataset: [MethodScans, ...]}``, datasets sorted, methods by (method_order, name)."""
    out: dict[str, list[MethodScans]] = {}
    order_col = records["method_order"] if "method_order" in records else np.full(len(records), -1)
    for dataset in sorted(set(records["dataset"])):
        in_ds = records["dataset"] == dataset
        methods = []
        for method in sorted(set(records["method"][in_ds])):
            sel = records.select(in_ds & (records["method"] == method))
            orders = [o for o in order_col[in_ds & (records["method"] == method)] if o >= 0]
            methods.append(_method_scans(dataset, method, (min(orders) if orders else 10**9, method), sel))
        out[dataset] = sorted(methods, key=lambda m: m.order)
    return out


def _method_scans(dataset: str, method: str, order: tuple[int, str], rec: Records) -> MethodScans:
    names = tuple(n for n in ALL_NAMES if n in set(rec["vertebra"]))
    col_of = {n: i for i, n in enumerate(names)}
    keys = sorted(set(zip(rec["run"], rec["seed"].tolist(), rec["case"])))
    row_of = {k: i for i, k in enumerate(keys)}
    n, k = len(keys), len(names)
    true_mm, pred_mm = np.full((n, k, 3), np.nan), np.full((n, k, 3), np.nan)
    pred_present, scores = np.zeros((n, k), bool), np.full((n, k), np.nan)
    patients = np.empty(n, object)
    meta = {c: np.full(n, "", object) for c in rec.meta_columns}
    eff = {c: np.full(n, np.nan) for c in EFFICIENCY_COLUMNS if rec.has_values(c)}
    true_all = np.stack([rec[c] for c in COORD_COLUMNS[:3]], -1)
    pred_all = np.stack([rec[c] for c in COORD_COLUMNS[3:]], -1)
    for i, key in enumerate(zip(rec["run"], rec["seed"].tolist(), rec["case"])):
        s, v = row_of[key], col_of[rec["vertebra"][i]]
        true_mm[s, v], pred_mm[s, v] = true_all[i], pred_all[i]
        pred_present[s, v], scores[s, v] = rec["pred_present"][i], rec["score"][i]
        patients[s] = rec["patient"][i] or rec["case"][i]
        for c in meta:
            meta[c][s] = meta[c][s] or rec[c][i]
        for c in eff:
            if np.isfinite(rec[c][i]):
                eff[c][s] = rec[c][i]
    return MethodScans(dataset, method, order, names, keys, patients, true_mm, pred_mm, pred_present, scores,
                       meta, eff)


@dataclass
class MethodSummary:
    """Point estimates and 95 % intervals per region (``(R,)`` arrays over ``metrics.REGION_COLUMNS``)."""

    method: str
    n_scans: int
    n_patients: int
    point: dict[str, np.ndarray]
    lo: dict[str, np.ndarray]
    hi: dict[str, np.ndarray]
    mean_ap: float
    vertebra_names: tuple[str, ...] = ()
    vertebra_mean_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    vertebra_lo: np.ndarray = field(default_factory=lambda: np.zeros(0))
    vertebra_hi: np.ndarray = field(default_factory=lambda: np.zeros(0))
    p_vs_best: dict[str, np.ndarray] = field(default_factory=dict)  # Holm-adjusted, NaN for the best itself


def _weights(scans: MethodScans, patients: np.ndarray, conv: Conventions) -> np.ndarray:
    # draws and counts per patient, weights and per-draw statistics per scan, 8 bytes each: refuse what cannot fit
    need = conv.n_boot * (2 * len(patients) + 4 * len(scans.patients)) * 8.0
    require_memory(need, f"--bootstrap {conv.n_boot:,} draws over {len(scans.patients):,} scans")
    return S.patient_weights(scans.patients.astype(str), patients, conv.n_boot, conv.seed)


def _median_draws(stats: M.CaseStats, weights: np.ndarray, average: str) -> np.ndarray:
    """``(B, R)`` bootstrap draws of the median error."""
    out = np.full((weights.shape[0], stats.masks.shape[0]), np.nan)
    for r, mask in enumerate(stats.masks):
        d = stats.distances_mm[:, mask]
        if average == "micro":
            scan, _ = np.nonzero(np.isfinite(d))
            out[:, r] = S.weighted_median(d[np.isfinite(d)], scan, weights)
        else:
            per_scan = np.array([np.median(x[np.isfinite(x)]) if np.isfinite(x).any() else np.nan for x in d])
            out[:, r] = M.nanmean_weighted(per_scan[:, None], weights)[:, 0]
    return out


def summarize(scans: MethodScans, conv: Conventions) -> MethodSummary:
    stats = scans.case_stats(conv)
    point = M.aggregate(stats, average=conv.average, denominator=conv.denominator)
    point["median_mm"] = M.median_error_mm(stats, average=conv.average)
    patients = np.array(sorted(set(scans.patients.astype(str))), dtype=object)
    w = _weights(scans, patients, conv)
    draws = M.aggregate(stats, average=conv.average, denominator=conv.denominator, weights=w)
    draws["median_mm"] = _median_draws(stats, w, conv.average)
    lo, hi = {}, {}
    for name, values in draws.items():
        lo[name], hi[name] = S.percentile_interval(values)
    # Per-vertebra mean error (pooled over scans) and its interval, for the plot.
    d = stats.distances_mm
    matched = np.isfinite(d).astype(float)
    d0 = np.where(np.isfinite(d), d, 0.0)
    vert = M.safe_divide(d0.sum(0), matched.sum(0))
    vlo, vhi = S.percentile_interval(M.safe_divide(*M.weighted_sums(w, d0, matched)))
    annotated = np.isfinite(scans.true_mm).all(-1)
    mean_ap = M.mean_average_precision(annotated, scans.scores)
    return MethodSummary(scans.method, len(scans.scan_keys), len(patients), point, lo, hi, mean_ap,
                         scans.names, vert, vlo, vhi)


def paired_tests(all_scans: list[MethodScans], summaries: list[MethodSummary], conv: Conventions) -> None:
    """Fill ``p_vs_best`` for ``mean_mm`` (lower is better) and ``id_rate`` (higher is better), per region."""
    n_regions = len(M.REGION_COLUMNS)
    for stat, better in (("mean_mm", np.nanargmin), ("id_rate", np.nanargmax)):
        raw = np.full((len(summaries), n_regions), np.nan)
        for r in range(n_regions):
            values = np.array([s.point[stat][r] for s in summaries])
            if len(summaries) < 2 or not np.isfinite(values).any():
                continue
            best = int(better(values))
            for m, scans in enumerate(all_scans):
                if m == best or not np.isfinite(values[m]):
                    continue
                raw[m, r] = _paired_p(scans, all_scans[best], stat, r, conv)
        for r in range(n_regions):
            adjusted = S.holm(raw[:, r])
            for m, s in enumerate(summaries):
                s.p_vs_best.setdefault(stat, np.full(n_regions, np.nan))[r] = adjusted[m]


def _paired_p(a: MethodScans, b: MethodScans, stat: str, region: int, conv: Conventions) -> float:
    common = np.array(sorted(set(a.patients.astype(str)) & set(b.patients.astype(str))), dtype=object)
    if common.size < 2:
        return float("nan")
    draws = []
    for scans in (a, b):
        sub = scans.subset(np.isin(scans.patients.astype(str), common))
        w = _weights(sub, common, conv)
        agg = M.aggregate(sub.case_stats(conv), average=conv.average, denominator=conv.denominator, weights=w)
        draws.append(agg[stat][:, region])
    return float(S.paired_bootstrap_p(draws[0] - draws[1]))


def summarize_dataset(all_scans: list[MethodScans], conv: Conventions) -> list[MethodSummary]:
    summaries = [summarize(s, conv) for s in all_scans]
    paired_tests(all_scans, summaries, conv)
    return summaries


def failure_summaries(all_scans: list[MethodScans], conv: Conventions) -> list[FailureSummary]:
    """The failure taxonomy of each method (``leaderboard.failures``) under the leaderboard's search and threshold."""
    return [summarize_failures(s.method, s.true_mm, s.pred_mm, s.pred_present, s.names, conv.threshold_mm,
                               conv.search) for s in all_scans]


def case_results(scans: MethodScans, conv: Conventions) -> dict[str, tuple[float, float]]:
    """``{case: (Id.Rate, mean error mm)}`` of one method, each case pooled over its scans (seeds, runs)."""
    return pooled_case_results([key[2] for key in scans.scan_keys], scans.case_stats(conv))


def pooled_case_results(case_ids, stats: M.CaseStats) -> dict[str, tuple[float, float]]:
    """``{case: (Id.Rate, mean error mm)}`` over all vertebrae, from the statistics of scans with ``case_ids``
    (scans of one case pooled)."""
    cases = np.array([str(c) for c in case_ids], dtype=object)
    out = {}
    for case in sorted(set(cases)):
        sel = cases == case
        annotated, hits = stats.n_annotated[sel, 0].sum(), stats.n_identified[sel, 0].sum()
        matched, total = stats.n_matched[sel, 0].sum(), stats.sum_mm[sel, 0].sum()
        out[str(case)] = (float(hits / annotated) if annotated else math.nan,
                          float(total / matched) if matched else math.nan)
    return out


@dataclass
class ConditionRow:
    column: str
    value: str
    summaries: list[MethodSummary]


def condition_breakdown(all_scans: list[MethodScans], conv: Conventions) -> list[ConditionRow]:
    """Per ``meta_*`` column with 2..8 distinct values, fewer than the cases (so not an identifier): each method's
    summary on the scans of each value. Columns that split the scans into the same groups are shown once, under
    their joined names (e.g. ``curvature/scoliosis`` when no case has kyphosis)."""
    columns = sorted(set().union(*(s.meta for s in all_scans))) if all_scans else []
    n_cases = len({key[2] for s in all_scans for key in s.scan_keys})
    kept: dict[frozenset, list[str]] = {}  # partition -> the columns giving it, the first one's values shown
    for col in columns:
        values = {v for s in all_scans for v in s.meta.get(col, ()) if v != ""}
        if 2 <= len(values) <= min(MAX_CONDITION_VALUES, n_cases - 1):
            kept.setdefault(_partition(all_scans, col), []).append(col)
    rows = []
    for same in kept.values():
        col = same[0]
        name = "/".join([col] + [c.removeprefix(META_PREFIX) for c in same[1:]])
        for value in sorted({v for s in all_scans for v in s.meta.get(col, ()) if v != ""}):
            subsets = [s.subset(s.meta[col] == value) for s in all_scans if col in s.meta]
            subsets = [s for s in subsets if s.scan_keys]
            rows.append(ConditionRow(name, value, [summarize(s, conv) for s in subsets]))
    return rows


def _partition(all_scans: list[MethodScans], column: str) -> frozenset[frozenset[tuple[str, str]]]:
    """The groups of cases that ``column`` splits the scans into (its values' names left out)."""
    groups: dict[str, set[tuple[str, str]]] = {}
    for s in all_scans:
        for key, v in zip(s.scan_keys, s.meta.get(column, np.full(len(s.scan_keys), "", object))):
            groups.setdefault(str(v), set()).add((str(key[0]), str(key[2])))
    return frozenset(frozenset(g) for g in groups.values())


def efficiency(all_scans: list[MethodScans]) -> list[dict[str, object]]:
    """Per method (only when some records carry efficiency columns): mean seconds/case, params, peak memory of
    training and of inference (the largest over the method's cells)."""
    if not any(s.efficiency for s in all_scans):
        return []
    out = []
    for s in all_scans:
        row: dict[str, object] = {"method": s.method}
        for col, reduce in (("seconds_per_case", np.nanmean), ("params", np.nanmax),
                            ("train_peak_memory_mb", np.nanmax), ("peak_memory_mb", np.nanmax)):
            vals = s.efficiency.get(col)
            row[col] = float(reduce(vals)) if vals is not None and np.isfinite(vals).any() else float("nan")
        out.append(row)
    return out

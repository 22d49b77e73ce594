"""Metric conventions against hand-computed cases: the one core (``leaderboard.metrics``, numpy) and the
torchmetrics classes over it, which must give the core's numbers however the scans are batched or sharded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from spinebench.benchmark.metrics import LocalizationIdentification, MultiLabelMeanAP
from spinebench.leaderboard import metrics as M

NAN3 = [np.nan, np.nan, np.nan]
ALL, CERV, THOR, LUMB, SACR = range(5)


def z(v: float) -> list[float]:
    return [0.0, 0.0, float(v)]


def numpy_stats(true_mm, pred_mm, present, names, *, search="glocker", denominator="annotated", average="micro"):
    stats = M.CaseStats.from_arrays(true_mm, pred_mm, present, names, search=search)
    out = M.aggregate(stats, average=average, denominator=denominator)
    out["median_mm"] = M.median_error_mm(stats, average=average)
    return out


def torch_stats(true_mm, pred_mm, present, names, *, search="glocker", denominator="annotated", average="micro"):
    """The torchmetrics class, fed one scan per ``update``."""
    t = lambda a: torch.as_tensor(np.asarray(a, float))  # noqa: E731
    metric = LocalizationIdentification(names, search=search, denominator=denominator, average=average)
    true, pred = t(true_mm).reshape(-1, len(names), 3), t(pred_mm).reshape(-1, len(names), 3)
    flags = torch.as_tensor(np.asarray(present, bool)).reshape(-1, len(names))
    for i in range(true.shape[0]):
        metric.update(true[i : i + 1], pred[i : i + 1], flags[i : i + 1])
    return {k: v.numpy() for k, v in metric.compute().items()}


BOTH = pytest.mark.parametrize("stats_fn", [numpy_stats, torch_stats], ids=["core", "torchmetrics"])


@BOTH
def test_rules_disagree_l2_l3(stats_fn):
    # True L2 at z=30 mm, L3 at z=60 mm; only L2 predicted, at z=46: 16 mm from L2 but 14 mm from L3.
    names = ["L2", "L3"]
    true, pred, present = [[z(30), z(60)]], [[z(46), NAN3]], [[True, False]]
    glocker = stats_fn(true, pred, present, names, search="glocker")
    verse = stats_fn(true, pred, present, names, search="verse")
    assert glocker["id_rate"][ALL] == 0.0  # the closest annotated centroid is L3's
    assert verse["id_rate"][ALL] == 0.5  # L3 is not predicted, so only L2 is searched: hit; denominator 2
    assert verse["mean_mm"][ALL] == glocker["mean_mm"][ALL] == 16.0
    assert glocker["misses"][ALL] == 1


@BOTH
def test_prediction_closer_to_neighbour_is_not_identified(stats_fn):
    names = ["T11", "T12"]
    true = [[z(0), z(25)]]
    pred = [[z(15), z(25)]]  # T11 predicted 15 mm from its own centroid, 10 mm from T12's
    for search in M.SEARCH_RULES:
        out = stats_fn(true, pred, [[True, True]], names, search=search)
        assert out["id_rate"][ALL] == 0.5
        assert out["id_rate"][THOR] == 0.5
        assert out["mean_mm"][ALL] == pytest.approx(7.5)


@BOTH
def test_exactly_20_mm_fails_the_papers_rule_and_passes_the_verse_code(stats_fn):
    names = ["L1"]
    at_20 = stats_fn([[z(100)]], [[z(120)]], [[True]], names)
    assert at_20["id_rate"][ALL] == 0.0  # "less than 20mm": 20.0 is a failure
    assert at_20["mean_mm"][ALL] == 20.0
    just_below = stats_fn([[z(100)]], [[z(119.999)]], [[True]], names)
    assert just_below["id_rate"][ALL] == 1.0
    # the VerSe challenge code counts exactly 20 mm as identified (<=): quantised coordinates land there
    assert stats_fn([[z(100)]], [[z(120)]], [[True]], names, search="verse")["id_rate"][ALL] == 1.0
    assert stats_fn([[z(100)]], [[z(120.001)]], [[True]], names, search="verse")["id_rate"][ALL] == 0.0


@BOTH
def test_miss_and_false_positive_and_denominators(stats_fn):
    names = ["C7", "T1", "T2", "L5", "S1"]
    true = [[z(0), z(-25), z(-50), z(-200), NAN3]]
    pred = [[z(2), z(-25), [0, 0, 0], z(-203), z(-230)]]
    present = [[True, True, False, True, True]]  # T2 missed; S1 predicted but not annotated
    ann = stats_fn(true, pred, present, names, denominator="annotated")
    matched = stats_fn(true, pred, present, names, denominator="matched")
    assert ann["misses"][ALL] == 1 and ann["misses"][THOR] == 1 and ann["misses"][CERV] == 0
    assert ann["false_positives"][ALL] == 1 and ann["false_positives"][SACR] == 1
    assert ann["id_rate"][ALL] == pytest.approx(3 / 4)  # the miss counts as a failure
    assert matched["id_rate"][ALL] == 1.0
    assert ann["id_rate"][THOR] == 0.5 and matched["id_rate"][THOR] == 1.0
    assert np.isnan(ann["id_rate"][SACR])  # no annotated sacrum
    assert ann["mean_mm"][ALL] == pytest.approx((2 + 0 + 3) / 3)  # the false positive has no error
    assert ann["std_mm"][ALL] == pytest.approx(np.std([2, 0, 3]))  # population std
    assert ann["median_mm"][ALL] == 2.0
    assert ann["n_annotated"][ALL] == 4 and ann["n_matched"][ALL] == 3


@BOTH
def test_micro_vs_macro_on_scans_of_different_sizes(stats_fn):
    names = ["L1", "L2", "L3", "L4"]
    far = z(500)
    # Scan A: only L1 annotated, identified at 2 mm.  Scan B: 4 annotated, L1 hit at 4 mm, L2..L4 off by 30 mm.
    true = [[z(0), NAN3, NAN3, NAN3], [z(0), z(-30), z(-60), z(-90)]]
    pred = [[z(2), far, far, far], [z(4), z(-60), z(-90), z(-120)]]
    present = [[True, False, False, False], [True, True, True, True]]
    micro = stats_fn(true, pred, present, names, average="micro")
    macro = stats_fn(true, pred, present, names, average="macro")
    assert micro["id_rate"][ALL] == pytest.approx(2 / 5)
    assert macro["id_rate"][ALL] == pytest.approx((1 + 1 / 4) / 2)
    assert micro["mean_mm"][ALL] == pytest.approx((2 + 4 + 90) / 5)
    assert macro["mean_mm"][ALL] == pytest.approx((2 + (4 + 90) / 4) / 2)
    assert micro["median_mm"][ALL] == 30.0
    assert macro["median_mm"][ALL] == pytest.approx((2 + 30) / 2)
    assert macro["misses"][ALL] == 0 and micro["n_annotated"][ALL] == 5


@pytest.mark.parametrize("search", M.SEARCH_RULES)
@pytest.mark.parametrize("denominator", M.DENOMINATORS)
@pytest.mark.parametrize("average", M.AVERAGES)
def test_the_torchmetrics_class_gives_the_core_s_numbers_on_random_scans(search, denominator, average):
    rng = np.random.default_rng(3)
    names = ["C6", "C7", "T1", "T2", "T12", "L1", "L5", "S1"]
    n, k = 9, len(names)
    true = np.stack([np.zeros(k), np.zeros(k), -25.0 * np.arange(k)], -1)[None] + rng.normal(0, 2, (n, k, 3))
    true[rng.random((n, k)) < 0.25] = np.nan
    pred = np.nan_to_num(true, nan=0.0) + rng.normal(0, 12, (n, k, 3))
    present = rng.random((n, k)) < 0.85
    a = numpy_stats(true, pred, present, names, search=search, denominator=denominator, average=average)
    b = torch_stats(true, pred, present, names, search=search, denominator=denominator, average=average)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-10, equal_nan=True, err_msg=key)
    assert 0 < a["id_rate"][ALL] < 1  # the case is not degenerate


def test_average_precision_by_hand_and_undefined_cases():
    # scores 0.9 (pos), 0.8 (neg), 0.7 (pos): AP = 0.5 * 1 + 0.5 * 2/3; ties count as one threshold.
    assert M.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    assert M.average_precision([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(M.average_precision([0, 0], [0.3, 0.9]))  # no positive
    assert np.isnan(M.average_precision([1, 0], [np.nan, 0.9]))  # a missing score
    # one rule for a missing score on both paths: the core's mAP and the class's are NaN, not a made-up number
    true, scores = np.array([[1, 0], [0, 1]], bool), np.array([[0.9, np.nan], [0.1, 0.8]])
    assert np.isnan(M.mean_average_precision(true, scores))
    metric = MultiLabelMeanAP()
    metric.update(torch.as_tensor(true), torch.as_tensor(scores))
    assert torch.isnan(metric.compute())


def test_mean_average_precision_skips_never_annotated_labels():
    true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool)
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.7, 0.3, 0.3]])
    expected = np.mean([average_precision_score(true[:, k], scores[:, k]) for k in (0, 1)])
    assert M.mean_average_precision(true, scores) == pytest.approx(expected)
    metric = MultiLabelMeanAP()
    metric.update(torch.as_tensor(true[:2]), torch.as_tensor(scores[:2]))
    metric.update(torch.as_tensor(true[2:]), torch.as_tensor(scores[2:]))
    assert float(metric.compute()) == pytest.approx(expected)


def _random_batch(seed: int, n: int, names: list[str]):
    rng = np.random.default_rng(seed)
    k = len(names)
    true = np.stack([np.zeros(k), np.zeros(k), -25.0 * np.arange(k)], -1)[None] + rng.normal(0, 2, (n, k, 3))
    true[rng.random((n, k)) < 0.2] = np.nan
    pred = np.nan_to_num(true, nan=5.0) + rng.normal(0, 10, (n, k, 3))
    return torch.as_tensor(true), torch.as_tensor(pred), torch.as_tensor(rng.random((n, k)) < 0.9)


@pytest.mark.parametrize("average", M.AVERAGES)
def test_torchmetrics_class_matches_the_core_and_merges_like_ddp(average):
    names = ["T10", "T11", "T12", "L1", "L2"]
    a, b = _random_batch(1, 3, names), _random_batch(2, 5, names)
    everything = [torch.cat([x, y]) for x, y in zip(a, b)]
    reference = {k: torch.as_tensor(v) for k, v in numpy_stats(*(x.numpy() for x in everything), names,
                                                                average=average).items()}
    single = LocalizationIdentification(names, average=average)
    single.update(*a)
    single.update(*b)
    # Two "processes", each with its own shard, merged as DDP's sync would (cat states).
    rank0 = LocalizationIdentification(names, average=average)
    rank1 = LocalizationIdentification(names, average=average)
    rank0.update(*a)
    rank1.update(*b)
    rank0.merge_state(rank1)
    for metric in (single, rank0):
        out = metric.compute()
        for key, value in reference.items():
            torch.testing.assert_close(out[key], value, equal_nan=True, msg=key)
    flat = single.flat("test/")
    assert flat["test/id_rate"] == pytest.approx(float(reference["id_rate"][0]))
    assert "test/lumbar/mean_mm" in flat


def test_bad_convention_names_are_rejected():
    with pytest.raises(ValueError, match="valid: glocker, verse"):
        M.identified(np.zeros((1, 3)), np.zeros((1, 3)), [True], search="closest")
    with pytest.raises(ValueError, match="average"):
        LocalizationIdentification(["L1"], average="weighted")


def test_mean_average_precision_in_one_call_equals_the_per_label_mean():
    """The one multilabel scikit-learn call gives the mean of the per-label APs (ties, labels that are always or
    never present, a single annotated label)."""
    rng = np.random.default_rng(4)
    true = rng.random((40, 26)) < 0.6
    true[:, 3], true[:, 7] = False, True
    scores = np.round(rng.random((40, 26)), 1)  # ties
    expected = np.mean([M.average_precision(true[:, k], scores[:, k]) for k in range(26) if true[:, k].any()])
    assert M.mean_average_precision(true, scores) == pytest.approx(expected, abs=1e-12)
    one = np.zeros_like(true)
    one[:5, 2] = True
    assert M.mean_average_precision(one, scores) == pytest.approx(M.average_precision(one[:, 2], scores[:, 2]))

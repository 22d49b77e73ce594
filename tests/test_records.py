"""Per-vertebra evaluation records: rows of a case, byte-stable CSV, atomic append, validation errors."""

from __future__ import annotations

import numpy as np
import pytest

from spinebench.benchmark.records import append_records, case_rows, read_rows, write_records
from spinebench.datamodules.errors import InputError
from spinebench.leaderboard.errors import LeaderboardInputError
from spinebench.leaderboard.schema import REQUIRED_COLUMNS, read_records

NAMES = ["T12", "L1", "L2", "L3"]
NAN3 = [np.nan] * 3


def _case(case="c1", method="di2in", seed=0, **kw):
    true = np.array([NAN3, [0, 0, 60.0], [0, 0, 30.0], [0, 0, 0.0]])
    pred = np.array([[1, 2, 90.0], [0, 0, 61.0], [0, 0, 46.0], [5, 5, 5.0]])
    kw.setdefault("metadata", {"metal": True, "curvature": "scoliosis"})
    return case_rows(run="run1", method=method, seed=seed, case=case, names=NAMES, true_mm=true, pred_mm=pred,
                     pred_present=np.array([True, True, True, False]), scores=np.array([0.6, 0.9, 0.8, 0.4]),
                     dataset="phantom", split="test", **kw)


def test_case_rows_hold_every_vertebra_with_distance_and_identification():
    rows = _case(seconds_per_case=1.5, params=1000, peak_memory_mb=12.0, method_order=2)
    assert [r["vertebra"] for r in rows] == NAMES
    t12, l1, l2, l3 = rows
    assert not t12["annotated"] and t12["pred_present"] and np.isnan(t12["distance_mm"])  # a false positive
    assert l1["distance_mm"] == 1.0 and l1["identified"]
    assert l2["distance_mm"] == 16.0 and not l2["identified"]  # 16 mm from L2, but 14 mm from L1's centroid
    assert l3["annotated"] and not l3["pred_present"] and not l3["identified"]  # a miss
    assert l1["region"] == "lumbar" and t12["region"] == "thoracic"
    assert l1["meta_metal"] == 1 and l1["meta_curvature"] == "scoliosis" and l1["patient"] == "c1"
    assert l1["seconds_per_case"] == 1.5 and l1["method_order"] == 2


def test_write_is_sorted_byte_identical_and_round_trips(tmp_path):
    rows = _case("c2") + _case("c1") + _case("c1", seed=1)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_records(a, rows)
    write_records(b, list(reversed(rows)))
    assert a.read_bytes() == b.read_bytes()
    header = a.read_text().splitlines()[0].split(",")
    assert header[: len(REQUIRED_COLUMNS)] == list(REQUIRED_COLUMNS)
    assert header[len(REQUIRED_COLUMNS):] == ["meta_curvature", "meta_metal"]
    back = read_rows(a)
    assert [(r["case"], r["seed"], r["vertebra"]) for r in back[:5]] == [
        ("c1", 0, "T12"), ("c1", 0, "L1"), ("c1", 0, "L2"), ("c1", 0, "L3"), ("c2", 0, "T12")]  # (seed, case) order
    write_records(tmp_path / "c.csv", back)
    assert (tmp_path / "c.csv").read_bytes() == a.read_bytes()
    rec = read_records(a)
    assert rec["distance_mm"][1] == 1.0 and np.isnan(rec["true_x_mm"][0]) and rec["annotated"].dtype == bool


def test_append_adds_and_replaces_rows(tmp_path):
    path = tmp_path / "records.csv"
    append_records(path, _case("c1"))
    append_records(path, _case("c2", seconds_per_case=2.0))
    assert len(read_rows(path)) == 8
    append_records(path, _case("c1", metadata={"metal": False}))  # re-evaluated case replaces its rows
    rows = read_rows(path)
    assert len(rows) == 8
    assert {r["meta_metal"] for r in rows if r["case"] == "c1"} == {"0"}
    assert {r["seconds_per_case"] for r in rows if r["case"] == "c2"} == {2.0}


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "records.csv"
    write_records(path, _case("c1"))
    before = path.read_bytes()
    with pytest.raises(InputError, match="duplicate"):
        write_records(path, _case("c1") + _case("c1"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.csv"]


def test_bad_arrays_raise_input_error():
    with pytest.raises(InputError, match="pred_mm has shape"):
        case_rows(run="r", method="m", seed=0, case="c", names=NAMES, true_mm=np.zeros((4, 3)),
                  pred_mm=np.zeros((3, 3)), pred_present=np.ones(4, bool), dataset="phantom", split="test")
    with pytest.raises(InputError, match="unknown vertebra label 'X9'"):
        case_rows(run="r", method="m", seed=0, case="c", names=["X9"], true_mm=np.zeros((1, 3)),
                  pred_mm=np.zeros((1, 3)), pred_present=np.ones(1, bool), dataset="phantom", split="test")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace(",lumbar,1,0.0,0.0,60.0", ",lumbar,yes,0.0,0.0,60.0", 1),
         "column 'annotated': expected 0 or 1"),
        (lambda t: t.replace("run,", "runs,", 1), "missing column 'run'"),
        (lambda t: t.replace(",L1,", ",Q1,", 1), "column 'vertebra': unknown vertebra label 'Q1'"),
        (lambda t: t.replace(",1.0,1,0.9,", ",3.0,1,0.9,", 1), "column 'distance_mm' does not match"),
        (lambda t: t.replace("meta_metal", "metal", 1), "unknown records column 'metal'"),
        (lambda t: t.replace(",thoracic,", ",lumbar,", 1), "column 'region'"),
    ],
)
def test_validation_errors_name_file_and_column(tmp_path, edit, message):
    good = tmp_path / "good.csv"
    write_records(good, _case("c1"))
    bad = tmp_path / "bad.csv"
    bad.write_text(edit(good.read_text()))
    with pytest.raises(LeaderboardInputError, match=message) as err:
        read_records(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)

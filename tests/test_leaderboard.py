"""The leaderboard from synthetic records files: formats, intervals, tests, escaping, determinism, reported rows."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from spinebench.benchmark.cli import main as cli_main
from spinebench.benchmark.records import write_records
from spinebench.leaderboard.build import build_leaderboard
from spinebench.leaderboard.evaluate import Conventions
from spinebench.leaderboard.projections import projection_png, write_projection
from spinebench.leaderboard.schema import read_records
from spinebench.leaderboard.stats import holm, paired_bootstrap_p, weighted_median
from tests.leaderboard_fixtures import EVIL, synthetic_rows, write_run

FAST = Conventions(n_boot=100)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _row(rows, method, region="all", kind="measured"):
    return next(r for r in rows if r["method"] == method and r["region"] == region and r["kind"] == kind)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    run = write_run(root / "run1")
    vol = np.random.default_rng(0).normal(size=(30, 12, 14)).astype(np.float32)
    true = np.array([[10.0, 6, 7], [20.0, 6, 7]])
    write_projection(run / "projections" / "case00.npz", vol, (2.0, 2.0, 2.0), true, true + 1.5, ["L1", "L2"],
                     case="case00", method=EVIL)
    out = build_leaderboard([run], root / "out", FAST)
    return root, run, out


def test_writes_all_four_formats_and_plots(board):
    _, _, out = board
    assert out.markdown.read_text().startswith("# spinebench leaderboard")
    assert "\\begin{tabular}" in out.latex.read_text()
    assert out.html.read_text().count("data:image/png;base64,") == 4  # id-rate, error, conditions, one projection
    assert sorted(p.name for p in out.plots) == ["conditions-phantom.png", "id-rate-phantom.png",
                                                 "per-vertebra-phantom.png", "projection-b_x-best.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.plots)
    rows = _csv(out.csv)
    assert {r["region"] for r in rows} == {"all", "cervical", "thoracic", "lumbar", "sacral"}
    measured = [r["method"] for r in rows if r["region"] == "all" and r["kind"] == "measured"]
    assert measured == ["di2in", "di2in_mp", EVIL]  # ablation order


def test_csv_recomputes_the_records_and_intervals_bracket_points(board):
    _, run, out = board
    rows = _csv(out.csv)
    rec = read_records(run / "records.csv")
    for method in ("di2in", "di2in_mp", EVIL):
        sel = rec["method"] == method
        r = _row(rows, method)
        assert float(r["mean_mm"]) == pytest.approx(np.nanmean(rec["distance_mm"][sel]), rel=1e-5)
        # the records' identified flag is the default convention, which the leaderboard recomputes
        id_rate = rec["identified"][sel].sum() / rec["annotated"][sel].sum()
        assert float(r["id_rate"]) == pytest.approx(id_rate, rel=1e-5)
        for stat in ("mean_mm", "std_mm", "median_mm", "id_rate", "misses", "false_positives"):
            for region in ("all", "thoracic", "lumbar"):
                x = _row(rows, method, region)
                assert float(x[f"{stat}_lo"]) <= float(x[stat]) <= float(x[f"{stat}_hi"]), (method, region, stat)
        assert float(r["mean_mm_lo"]) < float(r["mean_mm_hi"])


def test_paired_tests_find_the_best_and_an_identical_copy_is_not_different(tmp_path):
    rows = synthetic_rows(methods=(("bad", 12.0), ("best", 2.0)), n_cases=12, efficiency=False)
    copy = [dict(r, method="best_copy", method_order=2) for r in rows if r["method"] == "best"]
    write_records(tmp_path / "records.csv", rows + copy)
    out = build_leaderboard([tmp_path / "records.csv"], tmp_path / "out", FAST)
    csv_rows = _csv(out.csv)
    assert float(_row(csv_rows, "bad")["p_mean_mm_vs_best"]) < 0.05
    best_ps = [_row(csv_rows, m)["p_mean_mm_vs_best"] for m in ("best", "best_copy")]
    assert sorted(best_ps) == ["", "1"]  # one is the best (no test), the other is identical: p = 1
    assert "efficiency" not in out.markdown.read_text()  # no efficiency columns in these records


def test_holm_and_bootstrap_helpers():
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, np.nan])), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(holm(np.array([0.5, 0.2])), [0.5, 0.4])
    assert paired_bootstrap_p(np.full(99, 0.3)) == pytest.approx(0.01)
    assert paired_bootstrap_p(np.r_[np.full(50, -1.0), np.full(50, 1.0)]) == 1.0
    values, groups = np.array([3.0, 1.0, 2.0, 10.0]), np.array([0, 0, 1, 2])
    w = np.array([[1, 1, 1], [2, 0, 1], [0, 3, 0]], float)
    expected = [np.median(np.repeat(values, w[b][groups].astype(int))) for b in range(3)]
    np.testing.assert_allclose(weighted_median(values, groups, w), expected)


def test_escaping_in_every_format(board):
    _, _, out = board
    html_text = out.html.read_text()
    assert "&lt;b&gt;x_&amp;{}%$#" in html_text and "<b>x" not in html_text
    assert r"\<b\>x\_\&\{\}\%\$\#" in out.markdown.read_text()
    assert r"\textless{}b\textgreater{}x\_\&\{\}\%\$\#" in out.latex.read_text()
    assert EVIL in [r["method"] for r in _csv(out.csv)]  # CSV keeps the name, quoted by the csv module


def test_same_records_give_byte_identical_outputs(board, tmp_path):
    root, run, out = board
    again = build_leaderboard([run], tmp_path / "again", FAST)
    for a, b in ((out.markdown, again.markdown), (out.csv, again.csv), (out.latex, again.latex),
                 (out.html, again.html), *zip(out.plots, again.plots)):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_reported_rows_only_beside_the_same_dataset(tmp_path):
    write_run(tmp_path / "csi", dataset="csi2014", n_cases=6, efficiency=False)
    csi = build_leaderboard([tmp_path / "csi"], tmp_path / "csi_out", FAST)
    md = csi.markdown.read_text()
    assert "reported in the literature" in md
    assert "DI2IN\\+MP\\+Sparsity (reported: Yang et al. 2017" in md
    assert "Glocker et al. 2013" not in md  # only ~ values: hidden by default
    rows = _csv(csi.csv)
    reported = [r for r in rows if r["kind"] == "reported"]
    assert reported and all(r["n_scans"] == "" for r in reported)
    yang = next(r for r in reported if r["method"] == "DI2IN+MP+Sparsity" and "Set 2" in r["source"]
                and r["region"] == "all")
    assert float(yang["mean_mm"]) == 8.6 and float(yang["id_rate"]) == 0.85
    unconfirmed = build_leaderboard([tmp_path / "csi"], tmp_path / "all_out", FAST, include_unconfirmed=True)
    assert "Glocker et al. 2013" in unconfirmed.markdown.read_text()
    write_run(tmp_path / "ph", dataset="phantom", n_cases=6, efficiency=False)
    phantom = build_leaderboard([tmp_path / "ph"], tmp_path / "ph_out", FAST)
    assert "reported" not in phantom.markdown.read_text()
    assert not [r for r in _csv(phantom.csv) if r["kind"] == "reported"]


def test_condition_breakdown_and_efficiency_block(board):
    _, _, out = board
    md = out.markdown.read_text()
    assert "identification rate by case condition" in md and "efficiency" in md  # a plot in the page...
    rows = [r for r in _csv(out.csv) if r["kind"] == "condition"]  # ...and a table in the CSV
    means = {(r["condition"], r["condition_value"], r["method"]): float(r["mean_mm"]) for r in rows}
    assert means[("metal", "1", "di2in")] > means[("metal", "0", "di2in")]  # metal cases got more noise
    assert {r["condition"] for r in rows} == {"metal", "limited_fov"}
    assert all(r["n_scans"] == "5" for r in rows if r["condition"] == "metal")
    eff = [line for line in md.splitlines() if line.startswith("| di2in\\_mp | 0.50 |")]
    assert eff == ["| di2in\\_mp | 0.50 | 2.00 | – | 128 |"]  # no training memory in these records


def test_conventions_change_the_identification_rate(board, tmp_path):
    _, run, out = board
    matched = build_leaderboard([run], tmp_path / "m", Conventions(n_boot=50, denominator="matched"))
    macro = build_leaderboard([run], tmp_path / "a", Conventions(n_boot=50, average="macro"))
    base, den, avg = (float(_row(_csv(o.csv), "di2in")["id_rate"]) for o in (out, matched, macro))
    assert den > base and avg != base
    assert "matched vertebrae only" in matched.markdown.read_text()


def test_projection_png_and_bad_projection(tmp_path):
    bad = tmp_path / "projections" / "bad.npz"
    bad.parent.mkdir()
    np.savez(bad, sagittal=np.zeros((3, 3)))
    with pytest.raises(Exception, match="lacks 'coronal'"):
        projection_png(bad)


def test_cli_writes_outputs_and_reports_bad_input_in_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", n_cases=4, efficiency=False)
    assert cli_main(["leaderboard", str(run), "--out", str(tmp_path / "out"), "--bootstrap", "50"]) == 0
    assert (tmp_path / "out" / "leaderboard.html").is_file()
    bad = tmp_path / "bad.csv"
    bad.write_text((run / "records.csv").read_text().replace("run,method,seed", "run,method,seeds", 1))
    assert cli_main(["leaderboard", str(bad), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "'seed'" in err
    assert not (tmp_path / "out2").exists()
    assert cli_main(["leaderboard", str(tmp_path / "nothing"), "--out", str(tmp_path / "o3")]) == 2


@pytest.mark.slow
def test_leaderboard_imports_no_torch_and_nothing_of_benchmark():
    code = ("import sys, spinebench.leaderboard.build, spinebench.leaderboard.schema, "
            "spinebench.leaderboard.projections; bad = [m for m in sys.modules if m == 'torch' or "
            "m.startswith(('torch.', 'spinebench.benchmark', 'spinebench.methods'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_same_rows_in_two_files_are_rejected(tmp_path):
    write_run(tmp_path / "a", n_cases=2, efficiency=False)
    write_run(tmp_path / "b", n_cases=2, efficiency=False)
    with pytest.raises(Exception, match="the combined records files: duplicate row"):
        build_leaderboard([tmp_path / "a", tmp_path / "b"], tmp_path / "out", FAST)
    write_run(tmp_path / "c", n_cases=2, efficiency=False, run="run2")  # another run of the same methods: pooled
    out = build_leaderboard([tmp_path / "a", tmp_path / "c"], tmp_path / "out", FAST)
    assert _row(_csv(out.csv), "di2in")["n_scans"] == "4"


def test_identifier_like_metadata_is_not_a_condition(tmp_path):
    rows = synthetic_rows(n_cases=4, efficiency=False)
    for r in rows:
        r["meta_case_id"] = r["case"]  # one value per case: an identifier, not a condition
    write_records(tmp_path / "records.csv", rows)
    conditions = {r["condition"] for r in _csv(build_leaderboard([tmp_path / "records.csv"], tmp_path / "out",
                                                                 FAST).csv) if r["kind"] == "condition"}
    assert conditions == {"metal", "limited_fov"}  # not case_id

"""The leaderboard as a reader meets it: the headline first, failure classes in every format, conditions without
repeats, projections picked by result, the same headline in the terminal."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from rich.console import Console

from spinebench.benchmark.console_tables import print_leaderboard
from spinebench.benchmark.records import write_records
from spinebench.leaderboard.build import build_leaderboard
from spinebench.leaderboard.evaluate import Conventions, group_scans
from spinebench.leaderboard.failures import CLASSES, summarize_failures
from spinebench.leaderboard.plots import figure_png
from spinebench.leaderboard.projections import outside_view, pick_by_result, rank_cases, write_projection
from spinebench.leaderboard.schema import read_records
from tests.leaderboard_fixtures import EVIL, synthetic_rows, write_run

FAST = Conventions(n_boot=60)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("reading")
    run = write_run(root / "run1", n_cases=9)
    vol = np.random.default_rng(0).normal(size=(30, 12, 14)).astype(np.float32)
    true = np.array([[10.0, 6, 7], [20.0, 6, 7]])
    for c in range(9):  # every case of di2in_mp has a projection file: the leaderboard must choose by result
        write_projection(run / "projections" / "di2in_mp" / f"case{c:02d}.npz", vol, (2.0, 2.0, 2.0), true,
                         true + 1.0, ["L1", "L2"], case=f"case{c:02d}", method="di2in_mp")
    fig = Figure(figsize=(2, 1))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    (run / "curves.png").write_bytes(figure_png(fig))  # as the runner leaves it in a run folder
    return run, build_leaderboard([run], root / "out", FAST)


def test_headline_comes_first_with_the_best_marked_and_intervals_beside(board):
    _, out = board
    md = out.markdown.read_text()
    first_table = md.split("### ")[1]
    assert first_table.startswith("phantom: identification rate and mean localization error per region")
    header = next(line for line in first_table.splitlines() if line.startswith("| Method"))
    assert header.count("Id.Rate") == 5 and header.count("Mean (mm)") == 5 and "Std" not in header
    rows = {line.split(" | ")[0].lstrip("| "): line for line in first_table.splitlines() if line.count("|") > 5}
    evil = rows["\\<b\\>x\\_\\&\\{\\}\\%\\$\\#"]  # the least noisy method: best of every column
    assert evil.count("**") == 2 * 10 and "**" not in rows["di2in"]
    assert re.search(r"\*\*\d+\.\d\*\* \\\[\d+\.\d–\d+\.\d\\\]", evil)  # value, then its interval
    html = out.html.read_text()
    headline = html[html.index('<table id="headline-phantom"'):]
    headline = headline[: headline.index("</table>")]
    assert 'class="sortable"' in headline[:80]
    assert headline.count('<b class="best">') == 10 and headline.count('<small class="ci">') == 30
    sort_keys = [float(x) for x in re.findall(r'data-sort="([^"]+)"', headline)]
    assert len(sort_keys) == 30 and all(np.isfinite(sort_keys))
    assert html.index('id="headline-phantom"') < html.index('id="full-phantom"') < html.index('id="failures-phantom"')
    assert "<script>" in html and "addEventListener" in html  # sorting, inline: the page stays self-contained


def test_failure_classes_in_every_format_agree_with_the_taxonomy(board):
    run, out = board
    rows = [r for r in _csv(out.csv) if r["kind"] == "measured"]
    scans = {s.method: s for group in group_scans(read_records(run / "records.csv")).values() for s in group}
    for r in rows:
        shares = [float(r[f"share_{c}"]) for c in CLASSES]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert float(r["share_identified"]) == pytest.approx(float(r["id_rate"]), abs=1e-5)  # same rule
        if r["region"] == "all":
            s = scans[r["method"]]
            f = summarize_failures(s.method, s.true_mm, s.pred_mm, s.pred_present, s.names)
            assert int(r["scans_all_right"]) == f.all_right and int(r["scans_whole_shift"]) == f.whole_shift
            assert float(r["false_positives_per_scan"]) == pytest.approx(f.false_positives_per_scan, abs=1e-5)
            assert float(r["share_missed"]) == pytest.approx(f.shares["missed"][0], abs=1e-5)
            assert r["transitional_missed"] == ""  # the default label set has no T13 / L6
        else:
            assert r["scans_all_right"] == ""
    md, tex, html = out.markdown.read_text(), out.latex.read_text(), out.html.read_text()
    for text in (md, tex, html):
        assert "how each method fails, per region" in text and "failures per scan" in text
        assert "Mislocalised" in text and "Whole-spine shift" in text


def test_a_condition_that_repeats_another_is_shown_once(tmp_path):
    rows = synthetic_rows(n_cases=6, efficiency=False)
    for r in rows:
        scoliosis = int(r["case"][-1]) % 3 == 0
        r["meta_scoliosis"], r["meta_curvature"] = int(scoliosis), int(scoliosis)  # no kyphosis: the same cases
    write_records(tmp_path / "a.csv", rows)
    conditions = {r["condition"] for r in _csv(build_leaderboard([tmp_path / "a.csv"], tmp_path / "a", FAST).csv)
                  if r["kind"] == "condition"}
    assert conditions == {"curvature/scoliosis", "limited_fov", "metal"}  # one group, both names
    for r in rows:
        r["meta_curvature"] = int(r["meta_scoliosis"] or r["case"] == "case01")  # one kyphosis case
    write_records(tmp_path / "b.csv", rows)
    conditions = {r["condition"] for r in _csv(build_leaderboard([tmp_path / "b.csv"], tmp_path / "b", FAST).csv)
                  if r["kind"] == "condition"}
    assert {"curvature", "scoliosis"} <= conditions


def test_projections_are_the_best_median_and_worst_case_by_result(board):
    run, out = board
    rec = read_records(run / "records.csv")
    sel = (rec["method"] == "di2in_mp") & rec["annotated"].astype(bool)
    results = {}
    for case in sorted(set(rec["case"][sel])):
        c = sel & (rec["case"] == case)
        d = rec["distance_mm"][c]
        results[case] = (rec["identified"][c].sum() / c.sum(), np.nanmean(d))
    ranked = rank_cases(results)
    assert results[ranked[0]][0] >= results[ranked[-1]][0]
    expected = {"best": ranked[0], "median": ranked[4], "worst": ranked[-1]}
    assert [label for label, _ in pick_by_result(results)] == ["best", "median", "worst"]
    md = out.markdown.read_text()
    for label, case in expected.items():
        assert f"di2in\\_mp: {label} case, {case} (Id.Rate" in md
        assert (out.markdown.parent / "plots" / f"projection-di2in_mp-{label}.png").is_file()
    assert md.count("di2in\\_mp: ") == 3  # three of the nine files


def test_the_terminal_shows_the_same_headline_and_the_failure_summary(board):
    _, out = board
    console = Console(file=io.StringIO(), width=220, record=True)
    print_leaderboard(out, console)
    text = console.export_text()
    assert "identification rate and mean localization error per region" in text
    assert "how each method fails (all vertebrae)" in text and "efficiency" in text
    line = next(x for x in text.splitlines() if x.split() and x.split()[0] == "di2in_mp")
    row = next(r for r in out.headlines[0].rows if r[0] == "di2in_mp")
    # the same numbers as the Markdown headline, each region's Id.Rate and mean error side by side ("70.0 / 12.6")
    assert line.replace("/", " ").split()[1:] == [row[1]] + [c.text for c in row[2:]]
    assert EVIL in text  # rich markup in a method name is printed, not interpreted


def test_predictions_outside_the_image_are_marked_at_its_edge():
    points = np.array([[5.0, 3.0], [60.0, 3.0], [-4.0, 20.0], [np.nan, np.nan], [29.4, 11.4]])
    outside, edge = outside_view(points, (30, 12))
    assert outside.tolist() == [False, True, True, False, False]
    np.testing.assert_array_equal(edge, [[29.0, 3.0], [0.0, 11.0]])


def test_a_run_folders_learning_curves_are_on_the_page(board):
    run, out = board
    copy = out.markdown.parent / "plots" / "curves-run1.png"
    assert copy.read_bytes() == (run / "curves.png").read_bytes()
    assert "## Learning curves" in out.markdown.read_text() and 'id="curves-run1"' in out.html.read_text()

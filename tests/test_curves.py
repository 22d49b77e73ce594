"""Learning curves from the cells' CSV logs: parsing (repeated steps, empty cells) and the figure file."""

from __future__ import annotations

from pathlib import Path

from spinebench.leaderboard.curves import draw_curves, read_curves

CSV = """epoch,step,train/loss,val/id_rate,val/mean_error_mm
0,9,2.5,,
0,19,2.0,,
0,19,,0.25,30.0
1,29,1.5,,
1,29,1.25,,
1,39,nan,,
1,39,,0.5,12.5
"""


def _cell(root: Path, method: str, text: str = CSV) -> None:
    folder = root / "cells" / method / "seed0" / "curves"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(text)


def test_read_curves_keeps_the_last_value_of_a_repeated_step_and_skips_empty_and_nan(tmp_path):
    _cell(tmp_path, "di2in")
    series = read_curves(tmp_path / "cells/di2in/seed0/curves/metrics.csv")
    assert series["train/loss"] == [(9, 2.5), (19, 2.0), (29, 1.25)]  # step 29 logged twice (resume): last wins
    assert series["val/id_rate"] == [(19, 0.25), (39, 0.5)]
    assert series["val/mean_error_mm"] == [(19, 30.0), (39, 12.5)]
    assert "epoch" not in series


def test_one_panel_per_training_and_none_without_logs(tmp_path):
    assert draw_curves(tmp_path, [(0, ["di2in", "di2in_mp"])]) is None
    _cell(tmp_path, "di2in")
    _cell(tmp_path, "resml_cls")
    out = draw_curves(tmp_path, [(0, ["di2in", "di2in_mp"]), (0, ["resml_cls"]), (1, ["resml_cls"])])
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # deterministic bytes for the same inputs
    first = out.read_bytes()
    draw_curves(tmp_path, [(0, ["di2in", "di2in_mp"]), (0, ["resml_cls"]), (1, ["resml_cls"])])
    assert out.read_bytes() == first

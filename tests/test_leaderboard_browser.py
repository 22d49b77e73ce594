"""The HTML leaderboard opened in headless Chromium: tables in the DOM, every embedded image decoded, pixels drawn.

Skips with a reason when Chromium is absent, except in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from leaderboard.build import build_leaderboard
from leaderboard.evaluate import Conventions
from leaderboard.projections import write_projection
from tests.leaderboard_fixtures import EVIL, write_run

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# Appended to a copy of the page: once loaded, record how many images decoded and how many table rows exist.
PROBE = """<script>window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-decoded", ok + "/" + imgs.length);
  document.body.setAttribute("data-table-rows", String(document.querySelectorAll("table tbody tr").length));
});</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is not installed in CI; .ci/run must install it (apt-get install -y chromium)")
    pytest.skip("chromium not installed (apt-get install -y chromium); the browser check runs in CI")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    run = write_run(root / "run", n_cases=6)
    vol = np.random.default_rng(0).normal(size=(30, 12, 14)).astype(np.float32)
    true = np.array([[10.0, 6, 7], [20.0, 6, 7]])
    write_projection(run / "projections" / "c0.npz", vol, (2.0, 2.0, 2.0), true, true + 1, ["L1", "L2"],
                     case="case00", method=EVIL)
    return build_leaderboard([run], root / "out", Conventions(n_boot=50)).html


def _run_chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)


def test_tables_and_images_render_in_chromium(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    done = _run_chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    dom = done.stdout
    assert "<table" in dom, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images-decoded="3/3"' in body, body  # two plots and one projection, all decoded
    rows = int(re.search(r'data-table-rows="(\d+)"', body).group(1))
    assert rows >= 3 + 3 + 4 * 3 + 3  # main, tests, conditions (2 columns x 2 values x 3 methods), efficiency
    for table_id in ("main-phantom", "tests-phantom", "conditions-phantom", "efficiency-phantom"):
        assert f'id="{table_id}"' in dom
    assert "&lt;b&gt;x_&amp;{}%$#" in dom and "<b>x_" not in dom  # the method name is text, not markup


def test_screenshot_shows_a_drawn_page(page, tmp_path):
    shot = tmp_path / "shot.png"
    done = _run_chromium(["--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert shot.is_file(), done.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50  # text, table borders and the plots' colours; a blank page has one
    saturated = (pixels.max(-1) - pixels.min(-1)) > 0.3  # the plots' coloured markers (the tables are grey)
    assert saturated.sum() > 200

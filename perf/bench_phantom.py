"""Phantom generator figures: seconds per case on ONE thread, at 2 mm and 4 mm, and the default run's 8 mm cases.

Rows: a full spine (C1-S2, all difficulties off; beside it the same case without organs, hips, table and texture,
the part of the cost they add, and with generator version 5's opt-in vertebra detail), the worst
common case (full spine with metal streaks), the mean over 20 cases drawn with the default difficulty rates, a
small CPU-preset case (4-8 vertebrae at 4 mm) and the default run's cases (8 mm, 160 x 120 mm field of view). Cases
coarser than 2 mm are drawn at 2 mm or finer and block-averaged (``PhantomConfig.fine_spacing_mm``), so a 4 or 8 mm
case costs about what a 2 mm one does; the point-sampled rows (``fine_spacing_mm`` = the spacing) give the previous
behaviour's cost beside it.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import timed, write_fragment  # noqa: E402

from spinebench.datamodules.phantom import PhantomConfig, generate_case  # noqa: E402

OFF = dict(limited_fov_rate=0.0, scoliosis_rate=0.0, kyphosis_rate=0.0, metal_rate=0.0, anisotropic_rate=0.0)
N_DEFAULT = 20


def mean_seconds(config: PhantomConfig, n: int) -> tuple[float, float]:
    start = time.perf_counter()
    voxels = 0
    for index in range(n):
        voxels += generate_case(0, index, config).ct_hu.size
    return (time.perf_counter() - start) / n, voxels / n


def main() -> None:
    generate_case(0, 0, PhantomConfig(spacing_mm=4.0))  # warm-up: imports, shape model
    rows = []
    for spacing in (2.0, 4.0):
        t, case = timed(lambda: generate_case(0, 1, PhantomConfig(spacing_mm=spacing, **OFF)), repeat=3)
        rows.append((f"full spine C1-S2, no difficulties, {spacing:g} mm", case.ct_hu.shape, t))
        bare = PhantomConfig(spacing_mm=spacing, organs=False, texture=False, **OFF)  # no organs, hips, table, texture
        t, case = timed(lambda: generate_case(0, 1, bare), repeat=3)
        rows.append((f"the same without organs, hips, table and texture (`organs: false, texture: false`), "
                     f"{spacing:g} mm", case.ct_hu.shape, t))
        detail = PhantomConfig(spacing_mm=spacing, vertebra_detail=True, **OFF)  # version 5, opt-in
        t, case = timed(lambda: generate_case(0, 1, detail), repeat=3)
        rows.append((f"the same with subchondral bone, foramina and canal contents (`vertebra_detail: true`), "
                     f"{spacing:g} mm", case.ct_hu.shape, t))
        metal = PhantomConfig(spacing_mm=spacing, **{**OFF, "metal_rate": 1.0})
        t, case = timed(lambda: generate_case(0, 1, metal), repeat=3)
        rows.append((f"full spine C1-S2 + metal and streaks, {spacing:g} mm", case.ct_hu.shape, t))
        t, voxels = mean_seconds(PhantomConfig(spacing_mm=spacing), N_DEFAULT)
        rows.append((f"mean of {N_DEFAULT} cases, default difficulty rates, {spacing:g} mm",
                     f"{voxels / 1e6:.2f} Mvox mean", t))
    small = PhantomConfig(spacing_mm=4.0, fov_vertebrae=(4, 8))
    t, voxels = mean_seconds(small, N_DEFAULT)
    rows.append((f"CPU preset: 4-8 vertebrae at 4 mm (mean of {N_DEFAULT})", f"{voxels / 1e6:.3f} Mvox mean", t))
    window = {"scan_max_width_mm": 160.0, "scan_max_depth_mm": 120.0}  # configs/default.yaml
    for fine, how in ((2.0, "drawn at 2 mm, averaged"), (8.0, "point-sampled at 8 mm")):
        t, voxels = mean_seconds(PhantomConfig(spacing_mm=8.0, fine_spacing_mm=fine, **window), N_DEFAULT)
        rows.append((f"default run's cases, 8 mm, {how} (mean of {N_DEFAULT})", f"{voxels / 1e6:.3f} Mvox mean", t))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = ["## Phantom generator", "",
             "One thread (OMP/BLAS threads = 1; numpy element-wise code is single-threaded). Wall-clock seconds; "
             f"load average during the run: {load} (figures on a shared, busy machine are upper bounds).",
             "", "| case | volume | seconds per case |", "|---|---|---|"]
    lines += [f"| {what} | {shape} | {t:.3f} |" for what, shape, t in rows]
    print("\n".join(lines))
    write_fragment("phantom", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""How many crops whole-CT inference of the residual network needs: test Id.Rate and time per case by tile overlap.

Re-evaluates the trained residual-network cells of a finished run (default: the newest ``runs/default-*``; or
``--run DIR``) on that run's test split, once per ``tile_overlap`` (``methods/crop_inference.py``), with one
torch thread. Nothing is retrained and the run folder is not written to: the checkpoints are read, the
predictions are scored in memory with the run's own metric (Glocker rule, 20 mm). Crops per case counts the
tiles of every test volume.

Usage: ``.venv/bin/python perf/bench_resml_tiling.py [--run runs/default-...] [--overlaps 0.5 0.25 0]``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from common import LOAD_AT_START, REPO_ROOT, newest_run, shown_path, write_fragment

sys.path.insert(0, str(REPO_ROOT))

FAMILY = "resml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a finished run folder (config.yaml, cells/)")
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.5, 0.25, 0.0])
    args = parser.parse_args()
    run = args.run or newest_run()

    import torch

    torch.set_num_threads(1)
    from spinebench.benchmark.builders import build_method, label_names, quiet_lightning
    from spinebench.benchmark.cell import evaluate_checkpoint
    from spinebench.benchmark.layout import RESULT_FILE, CellResult, cell_dir, evaluated_checkpoint
    from spinebench.benchmark.config_files import load_experiment
    from spinebench.benchmark.results import test_metrics
    from spinebench.methods.crop_inference import tile_origins
    from spinebench.methods.registry import get_method_spec

    quiet_lightning()
    cfg = load_experiment(run / "config.yaml")
    seed = cfg.seeds[0]
    rows_md = []
    for entry in cfg.methods:
        if get_method_spec(entry.name).family != FAMILY or not (cell_dir(run, entry, seed) / RESULT_FILE).is_file():
            continue
        folder = cell_dir(run, entry, seed)
        checkpoint = evaluated_checkpoint(run, folder, CellResult.read(folder))
        for overlap in args.overlaps:
            variant = dataclasses.replace(entry, overrides={**entry.overrides, "tile_overlap": overlap})
            method = build_method(cfg, variant)
            start = time.perf_counter()
            rows, info = evaluate_checkpoint(cfg, variant, seed, checkpoint, method=method, run_name=run.name)
            wall = time.perf_counter() - start
            dm = info["_datamodule"]
            crop = method.config.crop_size_vox
            shapes = [dm.case_info(case).geometry.shape for case in dm.case_ids("test")]
            crops = sum(len(tile_origins([max(s, c) for s, c in zip(shape, crop)], crop, overlap)) for shape in shapes)
            m = test_metrics(rows, label_names(cfg))
            rows_md.append(
                f"| `{entry.name}` | {overlap:g} | {crops / len(shapes):.1f} | {100 * m['test/id_rate']:.1f} % | "
                f"{m['test/mean_mm']:.1f} mm | {1e3 * info['test/seconds_per_case']:.0f} ms |"
            )
            print(rows_md[-1], f"({wall:.0f} s)", flush=True)
    if not rows_md:
        sys.exit(f"{run}: no finished {FAMILY} cell")
    write_fragment(
        "resml_tiling",
        "## Residual network: tile overlap of whole-CT inference vs. test accuracy\n\n"
        f"Run `{run.name}` ({cfg.data.source}, {cfg.data.spacing_mm:g} mm, test split, seed {seed}), the "
        "checkpoints its test results came from re-evaluated with each `tile_overlap`; one torch thread; time per case is the prediction "
        "alone (tiling, network, clustering), as in the records.\n\n"
        "| cell | tile_overlap | crops per case | test Id.Rate | mean error | per case |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows_md) + "\n",
        command=f".venv/bin/python perf/bench_resml_tiling.py --run {shown_path(run)}",
    )
    print(f"load average at the start: {LOAD_AT_START:.2f}")


if __name__ == "__main__":
    main()

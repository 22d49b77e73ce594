"""``spinebench evaluate --run DIR --set data.KEY=VALUE --name NAME``: a run's trained models on another dataset.

Every complete cell of the run is evaluated, without training, on the test split of the run's data section with
the ``--set`` changes applied (another source, root, split, or phantom settings). Each model keeps what it learned
from its own training, its shape prior included. The records go to ``DIR/evaluations/NAME/records.csv`` (their
``dataset`` column is NAME, their ``run`` column RUN/NAME), and ``DIR/evaluations/NAME/leaderboard/`` compares the run's own test set with this
one; the run's own files are not changed.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from spinebench.datamodules.errors import InputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a run's trained models on another dataset or split (no training)",
        description="Evaluate every complete cell of a run on the test split of another dataset (the run's data "
        "section with --set changes), without training: records in DIR/evaluations/NAME/, and a leaderboard of "
        "the run's own test set beside this one.",
    )
    p.add_argument("--run", type=Path, required=True, help="output folder of `spinebench run`")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="data.KEY=VALUE",
                   help="change the run's data section, e.g. --set data.source=folder --set data.folder.root=/data/cts "
                   "--set data.folder.test_fraction=1.0 (repeatable; only data.* keys)")
    p.add_argument("--name", default=None, help="name of this evaluation and of its dataset in the records "
                   "(default: the data source); letters, digits, '-', '_', '.'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from spinebench.benchmark.builders import build_datamodule, build_method, load_weights, set_determinism
    from spinebench.benchmark.cell import evaluate_checkpoint
    from spinebench.benchmark.config import ConfigError
    from spinebench.benchmark.config_files import load_experiment
    from spinebench.benchmark.console_tables import print_leaderboard
    from spinebench.benchmark.layout import RECORDS_FILENAME, CellResult, cell_complete, cell_dir, evaluated_checkpoint
    from spinebench.benchmark.records import write_records
    from spinebench.benchmark.runner import listed_case_ids
    from spinebench.datamodules.atomic import ensure_folder
    from spinebench.leaderboard.build import build_leaderboard

    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--run {run_dir}: no config.yaml there (not a spinebench run folder)")
    if not args.sets:
        raise InputError("give the dataset to evaluate on with --set data.KEY=VALUE (e.g. data.source, data.folder.root)")
    for item in args.sets:
        if not item.startswith("data."):
            raise InputError(f"--set {item!r}: only data.* keys change in an evaluation (the models are the run's)")
    run_cfg = load_experiment(run_dir / "config.yaml", check_devices=False)
    cfg = load_experiment(run_dir / "config.yaml", args.sets, check_devices=False)
    name = args.name or cfg.data.source
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InputError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    cells = [(entry, seed) for entry, seed in run_cfg.cells() if cell_complete(cell_dir(run_dir, entry, seed))]
    if not cells:
        raise InputError(f"--run {run_dir}: no complete cell to evaluate")
    ids = listed_case_ids(cfg)  # the dataset is valid and has test cases before anything is written
    if not ids.get("test"):
        raise ConfigError(f"data: the {cfg.data.source} source lists no test case with these settings")
    out = run_dir / "evaluations" / name
    if out.exists():
        raise InputError(f"{out}: this evaluation exists already; pick another --name")
    console = Console(width=max(120, Console().width))
    rows: list[dict] = []
    for i, (entry, seed) in enumerate(cells, start=1):
        console.print(f"[bold]{i}/{len(cells)}[/bold]: {entry.name} seed {seed} on {name} "
                      f"({len(ids['test'])} test cases)")
        set_determinism(seed, cfg.trainer)
        method = build_method(run_cfg, entry)
        folder = cell_dir(run_dir, entry, seed)
        load_weights(method, evaluated_checkpoint(run_dir, folder, CellResult.read(folder)))  # with its own prior
        datamodule = build_datamodule(cfg, method)
        cell_rows, _ = evaluate_checkpoint(cfg, entry, seed, None, method=method, datamodule=datamodule,
                                           run_name=f"{run_dir.name}/{name}", method_order=i - 1, fit_prior=False)
        rows += [{**row, "dataset": name} for row in cell_rows]
    ensure_folder(out)
    records = write_records(out / RECORDS_FILENAME, rows)
    outputs = build_leaderboard([run_dir / RECORDS_FILENAME, records], out / "leaderboard")
    print_leaderboard(outputs, console)
    console.print(f"records: {records}, leaderboard: {out / 'leaderboard'}")
    return 0

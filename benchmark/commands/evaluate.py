"""``spinebench evaluate --run DIR --set KEY=VALUE --name NAME``: a run's trained models on another dataset, or with
other inference settings.

Every complete cell of the run is evaluated, without training, on the test split of the run's data section with
the ``--set`` changes applied (another source, root, split, or phantom settings), and with any of a method's
inference-only settings changed (``methods.NAME.overrides.FIELD``, a field its family declares inference-only,
e.g. DI2IN's ``presence_threshold``). Each model keeps what it learned from its own training, its shape prior
included. The records go to ``DIR/evaluations/NAME/records.csv`` (their ``dataset`` column is NAME, their ``run``
column RUN/NAME), and ``DIR/evaluations/NAME/leaderboard/`` compares the run's own datasets with this one; NAME
must differ from them. The run's own files are not changed.
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
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="change the run's data section, e.g. --set data.source=folder --set data.folder.root=/data/cts "
                   "--set data.folder.test_fraction=1.0, or a method's inference-only setting, e.g. --set "
                   "methods.di2in.overrides.presence_threshold=0.4 (repeatable; data.* keys and those only)")
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
    from spinebench.leaderboard.schema import read_records

    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--run {run_dir}: no config.yaml there (not a spinebench run folder)")
    if not args.sets:
        raise InputError("give the dataset to evaluate on with --set data.KEY=VALUE (e.g. data.source, "
                         "data.folder.root), or a method's inference-only setting (methods.NAME.overrides.FIELD=VALUE)")
    for item in args.sets:
        if not item.startswith(("data.", "methods.")):
            raise InputError(f"--set {item!r}: only data.* keys and methods' inference-only settings change in an "
                             "evaluation (the models are the run's)")
    run_cfg = load_experiment(run_dir / "config.yaml", check_devices=False)
    for item in args.sets:
        if item.startswith("methods."):
            check_inference_only(run_cfg, item)
    cfg = load_experiment(run_dir / "config.yaml", args.sets, check_devices=False)
    name = args.name or cfg.data.source
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InputError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    if (run_dir / RECORDS_FILENAME).is_file() and name in set(read_records(run_dir / RECORDS_FILENAME)["dataset"]):
        raise InputError(f"--name {name!r}: the run's own records hold a dataset of that name, which its leaderboard "
                         "would pool with this evaluation's; pick another --name")
    entries = {entry.name: entry for entry in cfg.methods}  # with the changed inference settings
    cells = [(entries[entry.name], seed) for entry, seed in run_cfg.cells()
             if cell_complete(cell_dir(run_dir, entry, seed))]
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
        method = build_method(cfg, entry)
        folder = cell_dir(run_dir, entry, seed)
        try:
            load_weights(method, evaluated_checkpoint(run_dir, folder, CellResult.read(folder)))  # with its own prior
        except RuntimeError as exc:  # a changed setting that adds or removes a part of the model
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0]  # torch's second line names the keys
            raise InputError(f"{entry.name}: its checkpoint does not fit the model with these --set changes "
                             f"({detail[:200]}); only settings that leave the model's parts as trained can "
                             "change") from None
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


def check_inference_only(run_cfg, item: str) -> None:
    """``--set methods.NAME.overrides.FIELD=VALUE`` is allowed when NAME is a method of the run and FIELD one its
    family declares inference-only (``VertebraMethod.inference_only_fields``): the trained weights stay valid."""
    from spinebench.methods.registry import get_method_spec

    key = item.split("=", 1)[0]
    parts = key.split(".")
    if len(parts) != 4 or parts[2] != "overrides":
        raise InputError(f"--set {item!r}: a method's setting is methods.NAME.overrides.FIELD=VALUE")
    entry = next((e for e in run_cfg.methods if e.name == parts[1]), None)
    if entry is None:
        raise InputError(f"--set {item!r}: the run has no method {parts[1]!r} "
                         f"(its methods: {', '.join(e.name for e in run_cfg.methods)})")
    fields = get_method_spec(entry.name).module_cls.inference_only_fields(run_cfg.method_config(entry))
    if parts[3] not in fields:
        raise InputError(f"--set {item!r}: {parts[3]} is not an inference-only setting of {entry.name} (those are: "
                         f"{', '.join(sorted(fields))}); the models are the run's")

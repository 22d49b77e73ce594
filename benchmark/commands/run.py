"""``spinebench run``: train and evaluate every (method, seed) cell of an experiment, then print the leaderboard."""

from __future__ import annotations

import argparse

from spinebench.configs import shipped_names


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a benchmark or ablation experiment (train, evaluate, leaderboard)",
        description="Train every (method, seed) cell of a YAML experiment on the shared datamodule, evaluate the "
        "test sets with the checkpoint trainer.test_checkpoint names (best validation identification rate, or the "
        "last), append per-case records and build the per-region leaderboard. Everything is validated before "
        "training starts.",
    )
    p.add_argument(
        "--config", default=None,
        help=f"experiment YAML file, or the name of a shipped config ({', '.join(shipped_names())}); "
        "default: default",
    )  # fmt: skip
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key with a YAML value, e.g. --set trainer.max_epochs=3 "
        "--set methods.di2in.overrides.base_width=16 --set data.csi2014.root=/data/csi2014 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--methods", default=None, type=lambda v: [m.strip() for m in v.split(",") if m.strip()], metavar="A,B",
        help="run only these of the experiment's methods, each with the experiment's settings for it, e.g. "
        "--methods di2in,di2in_mp_sparsity (the rest of the experiment unchanged; stored in the run's config.yaml)",
    )  # fmt: skip
    p.add_argument("-o", "--out", default=None, help="output folder (default: output.dir or runs/<name>-<UTC time>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR (complete cells are kept)")
    p.add_argument(
        "--tracking-uri", default=None, metavar="URI",
        help="MLflow tracking URI (server http://host:5000, sqlite:///path.db, ...); default MLFLOW_TRACKING_URI, "
             "else sqlite:///mlflow.db in the working folder",
    )  # fmt: skip
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved config (YAML, runs again as --config) and exit; writes nothing")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything (config, devices, data source, sizes), show the cells, the data and "
                   "the estimated memory, and exit; writes nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from spinebench.benchmark.config import ConfigError
    from spinebench.benchmark.runner import load_for_run, resolve_out_dir, run_benchmark

    if args.resume and args.out and args.out != args.resume:
        raise ConfigError("--resume DIR continues DIR; leave out --out (or give the same folder)")
    cfg = load_for_run(args.config, args.sets, args.resume, args.methods)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    out_dir = resolve_out_dir(cfg, args.out, args.resume)
    if args.dry_run:
        from spinebench.benchmark.dry_run import dry_run_report

        print(dry_run_report(cfg, out_dir, tracking_uri=args.tracking_uri))
        return 0
    console = Console(width=max(120, Console().width))  # the leaderboard table needs the room in logs too
    run_benchmark(cfg, out_dir, resume=bool(args.resume), tracking_uri=args.tracking_uri, console=console)
    from spinebench.benchmark.runner import global_rank

    if global_rank(cfg.trainer) == 0:
        console.print(f"results: {out_dir}/records.csv, leaderboard: {out_dir}/leaderboard/")
    return 0

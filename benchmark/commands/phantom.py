"""``spinebench phantom``: write synthetic spine CT cases (NIfTI + VerSe centroids + metadata, optional previews)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spinebench.benchmark.commands import bounded, non_negative, positive
from spinebench.benchmark.config_types import build_typed
from spinebench.datamodules.atomic import ensure_folder, write_bytes_atomic, write_json_atomic
from spinebench.datamodules.centroids import write_centroids
from spinebench.datamodules.ct_io import write_image
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.phantom import MAX_SPACING_MM


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "phantom",
        help="generate synthetic spine CT phantoms",
        description="Write N synthetic spine CTs: <case>_ct.nii.gz (HU, int16), <case>_ctd.json (VerSe centroids; "
        "S2 has no VerSe id and is left out), <case>_ctd.csv (every centroid incl. S2, LPS mm) and <case>_meta.json "
        "(difficulties and their parameters). Cases are phantom-s<seed>-<index>; the same seed gives the same files.",
    )
    p.add_argument("--n", type=positive(int), required=True, help="number of cases")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=non_negative(int), default=0)
    p.add_argument("--start", type=non_negative(int), default=0, help="first case index")
    p.add_argument("--spacing", type=bounded(float, 0, MAX_SPACING_MM, open_low=True), default=2.0,
                   help=f"voxel size in mm, at most {MAX_SPACING_MM:g} (default 2.0)")
    p.add_argument("--preview", action="store_true", help="also write <case>_preview.png (sagittal + coronal MIP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="PhantomConfig override, e.g. --set metal_rate=1.0 (repeatable)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    """The PhantomConfig of ``--spacing`` and ``--set``, every value checked against its field's type (as the
    ``data.phantom.generator`` section of a run config is)."""
    from dataclasses import fields

    from spinebench.datamodules.phantom import PhantomConfig

    known = {f.name for f in fields(PhantomConfig)}
    overrides: dict = {"spacing_mm": args.spacing}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise InputError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        try:
            overrides[key] = json.loads(value.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            overrides[key] = value
    return build_typed(PhantomConfig, overrides, "--set")


def run(args: argparse.Namespace) -> int:
    from spinebench.datamodules.phantom import check_resources, generate_case

    config = _config(args)
    check_resources(config, args.n, args.out)
    ensure_folder(args.out)
    for index in range(args.start, args.start + args.n):
        case = generate_case(args.seed, index, config)
        write_case(case, args.out, preview=args.preview)
        print(f"{case.case_id}: {case.ct_hu.shape} voxels, {len(case.centroids_mm)} vertebrae "
              f"({case.metadata['first_visible']}-{case.metadata['last_visible']}), {difficulty_summary(case.metadata)}")
    return 0


def difficulty_summary(meta: dict) -> str:
    """The difficulties applied to a case: its metadata entries ``{"applied": true, ...}``, in generation order."""
    flags = [k for k, v in meta.items() if isinstance(v, dict) and v.get("applied") is True]
    return "difficulties: " + (", ".join(flags) if flags else "none")


def write_case(case, out: Path, preview: bool = False) -> dict[str, Path]:
    base = out / case.case_id
    paths = {"ct": Path(f"{base}_ct.nii.gz"), "ctd": Path(f"{base}_ctd.json"), "csv": Path(f"{base}_ctd.csv"),
             "meta": Path(f"{base}_meta.json")}
    write_image(paths["ct"], case.ct_hu, case.geometry)
    write_centroids(paths["ctd"], case.centroids_mm.verse_numbered(), fmt="verse", geometry=case.geometry)
    write_centroids(paths["csv"], case.centroids_mm, fmt="csv")
    write_json_atomic(paths["meta"], case.metadata, indent=1)
    if preview:
        paths["preview"] = Path(f"{base}_preview.png")
        write_preview(case, paths["preview"])
    return paths


def write_preview(case, path: Path) -> None:
    """Sagittal and coronal maximum-intensity projections with the labelled true centroids
    (``leaderboard.projections``, the renderer of every projection), window -200..1500 HU."""
    from spinebench.leaderboard.projections import volume_views_png

    names = list(case.centroids_mm)
    vox = np.array([case.geometry.world_to_vox(case.centroids_mm[n]) for n in names]).reshape(-1, 3)
    png = volume_views_png(case.ct_hu, case.geometry.spacing_mm, truth=vox, names=names, window=(-200.0, 1500.0),
                           caption=f"{case.case_id}  {difficulty_summary(case.metadata)}")
    write_bytes_atomic(path, png)

"""``spinebench convert CENTROIDS --image IMAGE -o OUT``: centroid files between VerSe json, CSV and lml (the
formats from the suffixes, or named with ``--from`` / ``--to``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spinebench.benchmark.commands import refuse_overwriting
from spinebench.datamodules.centroids import CENTROID_FORMATS, centroid_format, read_centroids, write_centroids
from spinebench.datamodules.ct_io import read_geometry, silence_itk_warnings


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a centroid file (VerSe json, CSV, lml)",
        description="Convert a centroid file to another format. The image supplies the geometry that VerSe "
        "voxel coordinates need, and every centroid must lie inside it. CSV and lml hold LPS mm in the image's "
        "world frame; VerSe json holds voxel indices in the image's own orientation.",
    )
    p.add_argument("centroids", type=Path, help="centroid file (.json VerSe, .csv, .lml)")
    p.add_argument("--image", type=Path, required=True, help="the CT or mask the centroids belong to")
    p.add_argument("--from", dest="from_format", choices=CENTROID_FORMATS, default=None,
                   help="input format; default: from the suffix")
    p.add_argument("--to", choices=CENTROID_FORMATS, default=None,
                   help="output format; default: from the suffix of --out")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    silence_itk_warnings()
    refuse_overwriting({"--out": args.out}, {"centroids": args.centroids, "--image": args.image})
    in_format = centroid_format(args.centroids, args.from_format)
    out_format = centroid_format(args.out, args.to)  # a named format that the output's suffix contradicts: refused
    geometry = read_geometry(args.image)
    centroids = read_centroids(args.centroids, geometry, fmt=in_format)
    write_centroids(args.out, centroids, fmt=out_format, geometry=geometry)
    print(f"wrote {len(centroids)} centroids ({out_format}) to {args.out}")
    return 0

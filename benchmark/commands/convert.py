"""``spinebench convert CENTROIDS --image IMAGE --to FORMAT``: centroid files between VerSe json, CSV and lml."""

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
    p.add_argument("--to", choices=CENTROID_FORMATS, required=True, help="output format")
    p.add_argument("--out", type=Path, required=True, help="output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    silence_itk_warnings()
    refuse_overwriting({"--out": args.out}, {"centroids": args.centroids, "--image": args.image})
    in_format = centroid_format(args.centroids, args.from_format)
    centroid_format(args.out, args.to)  # the output's suffix must not name another format
    geometry = read_geometry(args.image)
    centroids = read_centroids(args.centroids, geometry, fmt=in_format)
    write_centroids(args.out, centroids, fmt=args.to, geometry=geometry)
    print(f"wrote {len(centroids)} centroids ({args.to}) to {args.out}")
    return 0

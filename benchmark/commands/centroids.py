"""``spinebench centroids MASK``: vertebra centroids from a VerSe-numbered label mask -> VerSe json, CSV or lml."""

from __future__ import annotations

import argparse
from pathlib import Path

from spinebench.benchmark.commands import refuse_overwriting
from spinebench.datamodules.centroids import CENTROID_FORMATS, centroid_format, centroids_from_mask, write_centroids
from spinebench.datamodules.ct_io import read_image, silence_itk_warnings
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.label_maps import MASK_LABEL_MAPS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "centroids",
        help="vertebra centroids from a label mask",
        description="Write the centre of mass of every vertebra in a VerSe-numbered label mask "
        "(1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 28 T13). With --subregions (VerSe/SPINEPS subregion "
        "mask, same grid) the vertebral-body centroid (subregions 49 + 50) is written instead.",
    )
    p.add_argument("mask", type=Path, help="vertebra label mask (NIfTI, NRRD, MHA/MHD or DICOM folder)")
    p.add_argument("--subregions", type=Path, default=None, help="subregion mask on the same grid")
    p.add_argument("--format", choices=CENTROID_FORMATS, default=None, help="default: from the --out suffix")
    p.add_argument("--labels", choices=MASK_LABEL_MAPS, default="verse",
                   help="the mask's numbering: verse (default), spineps, totalsegmentator (v2) or totalsegmentator-v1; "
                   "other structures of the map (organs, discs) are ignored, unknown values are an error")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file (.json VerSe, .csv, .lml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    silence_itk_warnings()
    refuse_overwriting({"--out": args.out}, {"mask": args.mask, "--subregions": args.subregions})
    fmt = centroid_format(args.out, args.format)  # fail on a bad suffix before reading volumes
    mask, geometry = read_image(args.mask)
    subregions = None
    if args.subregions is not None:
        subregions, sub_geometry = read_image(args.subregions)
        if sub_geometry != geometry:
            raise InputError(f"{args.subregions}: grid (shape, spacing, origin, direction) differs from {args.mask}")
    centroids = centroids_from_mask(mask, geometry, subregions, source=args.mask, labels=args.labels)
    write_centroids(args.out, centroids, fmt=fmt, geometry=geometry)
    print(f"wrote {len(centroids)} centroids ({', '.join(centroids.names)}) to {args.out}")
    return 0

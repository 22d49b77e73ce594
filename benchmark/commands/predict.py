"""``spinebench predict -i CT|FOLDER -o OUT --run DIR``: apply a method trained by ``spinebench run`` to CTs
(``benchmark.prediction`` does the work; this module only parses, so that ``spinebench --help`` stays fast).

The CT (any supported format) goes through the run's own preprocessing (canonical orientation, the run's
spacing, HU clipping, z-score); the prediction is mapped back to world mm through the preprocessed geometry
and written as VerSe json (voxel indices of the input image, so it needs the image) or CSV (LPS mm).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spinebench.benchmark.commands import non_negative, positive, refuse_overwriting
from spinebench.datamodules.errors import InputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict vertebra centroids on CTs with a method trained by `spinebench run`",
        description="Apply the best checkpoint of a trained method to a CT (NIfTI, NRRD, MHA/MHD or DICOM "
        "folder), or to every CT file of a folder, and write vertebra centroids as VerSe json or CSV, optionally "
        "with a preview PNG. The model is loaded once for all CTs of a folder.",
    )
    p.add_argument("ct", type=Path, nargs="?", default=None, help="the CT (file or DICOM series folder); or use -i")
    p.add_argument("-i", "--input", type=Path, default=None, dest="input",
                   help="a CT, or a folder of CT files (each predicted; the output is then a folder)")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="centroid file (.json VerSe, .csv LPS mm); for a folder of CTs, the output folder")
    p.add_argument("--run", type=Path, required=True, help="output folder of `spinebench run`")
    p.add_argument("--method", default=None, help="method of the run (default: best test Id.Rate of the run)")
    p.add_argument("--seed", type=non_negative(int), default=None, help="which seed's checkpoint (default: the run's first)")
    p.add_argument("--format", choices=("verse", "csv"), default="verse",
                   help="for a folder of CTs: <name>_ctd.json (verse, default) or <name>_ctd.csv")
    p.add_argument("--preview", action="store_true",
                   help="also write <out>.png: sagittal/coronal MIP of the CT at its own resolution + centroids")
    p.add_argument("--threads", type=positive(int), default=None,
                   help="torch threads (default: the free cores: usable cores minus the 1-minute load average)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinebench.benchmark.prediction import Predictor, ct_files, image_files, predict_file, predict_folder
    from spinebench.datamodules.centroids import centroid_format

    if (args.ct is None) == (args.input is None):
        raise InputError("give the CT either as the argument or with -i/--input (one of them)")
    source = args.ct or args.input
    if source.is_dir() and image_files(source) and not ct_files(source):
        raise InputError(f"{source}: holds only label masks ({image_files(source)[0].name}, ...), no CT to predict on")
    if source.is_dir() and ct_files(source):  # a folder of CT files (a DICOM series folder is one CT)
        if args.out.exists() and not args.out.is_dir():
            raise InputError(f"--out {args.out}: for a folder of CTs, --out is a folder; this is a file")
        predictor = Predictor(args.run, args.method, args.seed, args.threads)
        return 2 if predict_folder(predictor, source, args.out, args.format, args.preview) else 0  # any failed: 2
    outputs = {"--out": args.out, "--preview": Path(args.out).with_suffix(".png") if args.preview else None}
    refuse_overwriting(outputs, {"ct": source, "--run": args.run})
    fmt = centroid_format(args.out, None)
    if fmt not in ("verse", "csv"):
        raise InputError(f"--out {args.out}: write .json (VerSe) or .csv; got format {fmt!r}")
    predictor = Predictor(args.run, args.method, args.seed, args.threads)
    predict_file(predictor, source, args.out, fmt, args.preview)
    return 0

"""How a trained run reads real CTs shown at other sizes: a sim2real diagnostic.

    .venv/bin/python tools/real_ct_sensitivity.py --run runs/sim2real --real DIR [--scales 0.9 1 1.1 1.2]
        [--name real] [--set data.folder.mask_labels=totalsegmentator]

``DIR`` is a folder of CTs in the ``folder`` source's naming (each CT with a vertebra mask or a VerSe ``.json``
centroid file). For each scale s the tool writes a copy of the folder whose images are stretched by s about the
world origin (spacing and origin times s; the voxels and the direction unchanged, so every vertebra is s times
its size and a mask moves with its CT), evaluates every complete cell of the run on that copy
(``spinebench evaluate --name NAME-x<s>``: records and a leaderboard in ``RUN/evaluations/``), and prints each
method's Id.Rate, the share of vertebrae one level off and the false positives per scan, one column per scale.

A VerSe ``.json`` holds voxel coordinates, which follow the stretched voxels; centroid files in millimetres
(``.csv``, ``.lml``) would not, and DICOM folders are not rewritten, so a folder with either is refused. A method
whose Id.Rate climbs with s reads the real spines as smaller than the spines it was trained on (README, *Further
test sets*: the sim2real run's DI2IN, 2026-12-06).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

from spinebench.datamodules.ct_io import image_suffix
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.sources.files import is_dicom_folder

STATS = (("id_rate", "Id.Rate %", 100.0), ("share_shift_1", "one level off %", 100.0),
         ("false_positives_per_scan", "false positives per scan", 1.0))


def scaled_copy(src: Path, dst: Path, scale: float) -> None:
    """Copy ``src`` to ``dst`` with every image's spacing and origin multiplied by ``scale``."""
    for path in sorted(src.rglob("*")):
        if path.is_dir():
            if is_dicom_folder(path):
                raise InputError(f"{path}: DICOM series are not rewritten; convert them first (spinebench convert)")
            continue
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if image_suffix(path) is not None:
            image = sitk.ReadImage(str(path))
            image.SetSpacing([x * scale for x in image.GetSpacing()])
            image.SetOrigin([x * scale for x in image.GetOrigin()])
            sitk.WriteImage(image, str(out))
        elif path.suffix.lower() in (".csv", ".lml"):
            raise InputError(f"{path}: centroids in millimetres would not follow the stretched images; "
                             "give masks or VerSe .json files")
        else:
            shutil.copyfile(path, out)


def evaluate(run: Path, root: Path, name: str, extra: list[str]) -> Path:
    sets = ["data.source=folder", f"data.folder.root={root}", "data.folder.test_fraction=1.0", *extra]
    command = [sys.executable, "-m", "spinebench", "evaluate", "--run", str(run), "--name", name]
    for s in sets:
        command += ["--set", s]
    code = subprocess.run(command).returncode
    if code != 0:
        raise SystemExit(code)  # evaluate has said why
    return run / "evaluations" / name / "leaderboard" / "leaderboard.csv"


def headline(path: Path, dataset: str) -> dict[str, dict[str, float]]:
    """{method: {stat: value}} of the leaderboard's measured all-region rows of ``dataset``."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dataset"] == dataset and r["kind"] == "measured"
                and r["region"] == "all" and not r["condition"]]
    return {r["method"]: {k: float(r[k]) if r[k] else float("nan") for k, _, _ in STATS} for r in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="output folder of `spinebench run`")
    parser.add_argument("--real", type=Path, required=True, help="folder of CTs with masks or VerSe .json files")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.9, 1.0, 1.1, 1.2])
    parser.add_argument("--name", default="real", help="evaluations are named NAME-x<scale>")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="data.KEY=VALUE",
                        help="further data settings for the folder (e.g. data.folder.mask_labels=...)")
    args = parser.parse_args(argv)
    if not args.real.is_dir():
        parser.error(f"--real {args.real}: not a folder")
    if any(s <= 0 for s in args.scales):
        parser.error(f"--scales must be positive, got {args.scales}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="spinebench-scaled-") as tmp:
        for scale in args.scales:
            name = f"{args.name}-x{scale:.2f}"
            root = Path(tmp) / name
            try:
                scaled_copy(args.real, root, scale)
            except InputError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            results[scale] = headline(evaluate(args.run, root, name, args.sets), name)
            shutil.rmtree(root)
    methods = list(dict.fromkeys(m for r in results.values() for m in r))
    for key, title, factor in STATS:
        print(f"\n{title} by scale of the real CTs")
        print(f"{'method':20s}" + "".join(f"{'x' + format(s, '.2f'):>9s}" for s in args.scales))
        for m in methods:
            values = [results[s].get(m, {}).get(key, float("nan")) * factor for s in args.scales]
            print(f"{m:20s}" + "".join(f"{v:9.1f}" if factor != 1.0 else f"{v:9.2f}" for v in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``spinebench predict CT --run DIR``: apply a method trained by ``spinebench run`` to one CT.

The CT (any supported format) goes through the run's own preprocessing (canonical orientation, the run's
spacing, HU clipping, z-score); the prediction is mapped back to world mm through the preprocessed geometry
and written as VerSe json (voxel indices of the input image, so it needs the image) or CSV (LPS mm).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.commands import non_negative, positive, refuse_overwriting
from datamodules.errors import InputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict vertebra centroids on one CT with a method trained by `spinebench run`",
        description="Apply the best checkpoint of a trained method to one CT (NIfTI, NRRD, MHA/MHD or DICOM "
        "folder) and write its vertebra centroids as VerSe json or CSV, optionally with a preview PNG.",
    )
    p.add_argument("ct", type=Path, help="the CT volume (file or DICOM series folder)")
    p.add_argument("--run", type=Path, required=True, help="output folder of `spinebench run`")
    p.add_argument("--method", default=None, help="method of the run (default: best test Id.Rate of the run)")
    p.add_argument("--seed", type=non_negative(int), default=None, help="which seed's checkpoint (default: the run's first)")
    p.add_argument("--out", type=Path, required=True, help="centroid file: .json (VerSe) or .csv (LPS mm)")
    p.add_argument("--preview", action="store_true",
                   help="also write <out>.png: sagittal/coronal MIP of the CT at its own resolution + centroids")
    p.add_argument("--threads", type=positive(int), default=None,
                   help="torch threads (default: the free cores: usable cores minus the 1-minute load average)")
    p.set_defaults(func=run)


def _choose_cell(run_dir: Path, cfg, method: str | None, seed: int | None):
    from benchmark.cell import RESULT_FILE, CellResult, cell_dir

    entries = {m.name: m for m in cfg.methods}
    if method is not None and method not in entries:
        raise InputError(f"--method {method!r}: not a method of the run {run_dir}; its methods: {', '.join(entries)}")
    seeds = [seed] if seed is not None else list(cfg.seeds)
    if seed is not None and seed not in cfg.seeds:
        raise InputError(f"--seed {seed}: not a seed of the run {run_dir}; its seeds: {', '.join(map(str, cfg.seeds))}")
    candidates = []
    for name in [method] if method else list(entries):
        for s in seeds:
            folder = cell_dir(run_dir, entries[name], s)
            if (folder / RESULT_FILE).is_file():
                result = CellResult.read(folder)
                rate = result.metrics.get("test/id_rate", result.metrics.get("val/id_rate", 0.0))
                candidates.append((-(rate if rate == rate else -1.0), list(entries).index(name), s, name, result))
    if not candidates:
        what = f"method {method!r}" if method else "any method"
        raise InputError(f"--run {run_dir}: no completed cell for {what}; finish it with spinebench run --resume {run_dir}")
    _, _, s, name, result = sorted(candidates, key=lambda c: c[:3])[0]
    # the checkpoint result.json names if it lies inside the run, else the cell's own (runs written before paths
    # were relative name it relative to where they ran); one outside the run folder is never loaded
    recorded, own = result.best_checkpoint, cell_dir(run_dir, entries[name], s) / "checkpoints" / "best.ckpt"
    inside = lambda path: path.resolve().is_relative_to(Path(run_dir).resolve())  # noqa: E731
    if recorded is not None and inside(recorded) and recorded.is_file():
        return entries[name], s, recorded
    if own.is_file():
        return entries[name], s, own
    if recorded is not None and not inside(recorded):
        raise InputError(f"--run {run_dir}: the checkpoint of {name} seed {s} lies outside the run folder "
                         f"({recorded}); a run folder must hold its own checkpoints")
    raise InputError(f"--run {run_dir}: checkpoint of {name} seed {s} is missing ({recorded or own})")


def predict_ct(ct: Path, run_dir: Path, method: str | None = None, seed: int | None = None,
               threads: int | None = None):
    """Returns (Centroids in world mm of the present vertebrae, original geometry, method name, preprocessed)."""
    import torch

    from benchmark.threads import choose_threads

    torch.set_num_threads(choose_threads(threads))
    from benchmark.builders import build_method, load_weights
    from benchmark.config import ConfigError, load_experiment
    from datamodules.centroids import Centroids
    from datamodules.ct_io import read_sitk_image
    from datamodules.preprocess import preprocess_volume
    from datamodules.labels import get_label_set

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--run {run_dir}: no config.yaml there (not a spinebench run folder)")
    cfg = load_experiment(run_dir / "config.yaml", check_devices=False)
    entry, seed, checkpoint = _choose_cell(run_dir, cfg, method, seed)
    original, geometry = read_sitk_image(ct)
    image, pre_geometry = preprocess_volume(original, geometry, cfg.data.preprocess_params, str(ct))
    model = build_method(cfg, entry)
    load_weights(model, checkpoint)  # shape priors are buffers in the checkpoint; methods size them on load
    model.eval()
    with torch.no_grad():
        tensor = torch.as_tensor(image, dtype=torch.float32)[None, None]
        pred = model.predict_volume(tensor)
    names = get_label_set(cfg.data.label_set).names
    world = pre_geometry.vox_to_world(pred.centroids_vox)
    present = {n: world[k] for k, n in enumerate(names) if pred.present[k] and geometry.contains_vox(
        geometry.world_to_vox(world[k]), margin=0.5)}
    return Centroids(present), geometry, entry.name, (image, pre_geometry, pred, original)


def run(args: argparse.Namespace) -> int:
    from datamodules.centroids import centroid_format, write_centroids

    outputs = {"--out": args.out, "--preview": Path(args.out).with_suffix(".png") if args.preview else None}
    refuse_overwriting(outputs, {"ct": args.ct, "--run": args.run})
    fmt = centroid_format(args.out, None)
    if fmt not in ("verse", "csv"):
        raise InputError(f"--out {args.out}: write .json (VerSe) or .csv; got format {fmt!r}")
    centroids, geometry, method, (*_, original) = predict_ct(args.ct, args.run, args.method, args.seed, args.threads)
    written = centroids.verse_numbered() if fmt == "verse" else centroids
    write_centroids(args.out, written, fmt=fmt, geometry=geometry)
    print(f"{method}: wrote {len(written)} centroids ({', '.join(written.names) or 'none'}) to {args.out}")
    if len(written) < len(centroids):
        print("S2 has no VerSe id and is not in the json; write .csv to keep it")
    if args.preview:
        png = Path(args.out).with_suffix(".png")
        write_preview(png, *preview_volume(original, geometry), centroids, title=f"{Path(args.ct).name} — {method}")
        print(f"preview: {png}")
    return 0


def preview_volume(original, geometry):
    """The input CT (a SimpleITK image) at its own resolution in canonical orientation, and its geometry: what the
    preview draws (not the run's network grid, on which a spine at 8 mm cannot be recognised)."""
    import SimpleITK as sitk

    from datamodules.ct_io import reorient_canonical

    return reorient_canonical(sitk.GetArrayViewFromImage(original), geometry)


def write_preview(path: Path, image, geometry, centroids, title: str = "") -> None:
    """Sagittal and coronal maximum-intensity projections of a canonical (``reorient_canonical``) HU volume with
    labelled centroids, in mm (anisotropic voxels drawn to scale), bone window -250..1250 HU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from datamodules.atomic import atomic_path

    vox = {n: geometry.world_to_vox(c) for n, c in centroids.items()}
    sp = geometry.spacing_mm
    fig, axes = plt.subplots(1, 2, figsize=(8, 6))
    # axis 0 grows superior, 1 posterior, 2 patient-left: sagittal = max over 2, coronal = max over 1.
    for ax, (proj_axis, horiz, label) in zip(axes, ((2, 1, "sagittal"), (1, 2, "coronal"))):
        mip = np.asarray(image).max(axis=proj_axis)
        # voxel i covers [i - 0.5, i + 0.5] * spacing: centroids in voxel coordinates land on their voxel's centre
        extent = (-0.5 * sp[horiz], (mip.shape[1] - 0.5) * sp[horiz], -0.5 * sp[0], (mip.shape[0] - 0.5) * sp[0])
        ax.imshow(mip, cmap="gray", origin="lower", extent=extent, aspect="equal", vmin=-250, vmax=1250)
        for name, v in vox.items():
            x, y = v[horiz] * sp[horiz], v[0] * sp[0]
            ax.plot(x, y, "o", color="tab:red", markersize=3)
            ax.text(x + 2, y, name, color="yellow", fontsize=6)
        ax.set_title(label)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)

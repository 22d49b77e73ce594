"""Applying a method trained by ``spinebench run`` to CTs (``spinebench predict``): ``Predictor`` loads a run's
chosen checkpoint once; ``predictor(ct)`` runs the run's own preprocessing and maps the prediction back to world
mm; ``predict_file`` / ``predict_folder`` write centroid files and previews.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from spinebench.benchmark.builders import build_method, load_weights
from spinebench.benchmark.config import ConfigError
from spinebench.benchmark.config_files import load_experiment
from spinebench.benchmark.layout import CellResult, cell_complete, cell_dir, evaluated_checkpoint
from spinebench.benchmark.threads import choose_threads
from spinebench.datamodules.atomic import ensure_folder, write_bytes_atomic
from spinebench.datamodules.centroids import Centroids, write_centroids
from spinebench.datamodules.ct_io import image_suffix, read_sitk_image
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.labels import get_label_set
from spinebench.datamodules.orientation import reorient_canonical
from spinebench.datamodules.preprocess import preprocess_volume
from spinebench.datamodules.sources.files import is_mask_name
from spinebench.leaderboard.projections import volume_views_png


def choose_cell(run_dir: Path, cfg, method: str | None, seed: int | None):
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
            if cell_complete(folder):
                result = CellResult.read(folder)
                rate = result.metrics.get("test/id_rate", result.metrics.get("val/id_rate", 0.0))
                candidates.append((-(rate if rate == rate else -1.0), list(entries).index(name), s, name, result))
    if not candidates:
        what = f"method {method!r}" if method else "any method"
        raise InputError(f"--run {run_dir}: no completed cell for {what}; finish it with spinebench run --resume {run_dir}")
    _, _, s, name, result = sorted(candidates, key=lambda c: c[:3])[0]
    return entries[name], s, evaluated_checkpoint(run_dir, cell_dir(run_dir, entries[name], s), result)


class Predictor:
    """A run's chosen method, loaded once; ``predictor(ct)`` -> (Centroids in world mm of the present vertebrae,
    the CT's geometry, the CT as read). The CT goes through the run's own preprocessing."""

    def __init__(self, run_dir: Path, method: str | None = None, seed: int | None = None,
                 threads: int | None = None) -> None:
        torch.set_num_threads(choose_threads(threads))
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--run {run_dir}: no config.yaml there (not a spinebench run folder)")
        self.cfg = load_experiment(run_dir / "config.yaml", check_devices=False)
        entry, self.seed, checkpoint = choose_cell(run_dir, self.cfg, method, seed)
        self.method = entry.name
        self.model = build_method(self.cfg, entry)
        load_weights(self.model, checkpoint)  # shape priors are buffers in the checkpoint; sized on load
        self.model.eval()

    def __call__(self, ct: Path):
        original, geometry = read_sitk_image(ct)
        image, pre_geometry = preprocess_volume(original, geometry, self.cfg.data.preprocess_params, str(ct))
        with torch.no_grad():
            pred = self.model.predict_scan(torch.as_tensor(image, dtype=torch.float32)[None, None])
        names = get_label_set(self.cfg.data.label_set).names
        world = pre_geometry.vox_to_world(pred.centroids_vox)
        present = {n: world[k] for k, n in enumerate(names) if pred.present[k] and geometry.contains_vox(
            geometry.world_to_vox(world[k]), margin=0.5)}
        return Centroids(present), geometry, original


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, CTs and masks (a folder holding a DICOM series is one CT, not a folder of CTs)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and image_suffix(p) is not None)


def ct_files(folder: Path) -> list[Path]:
    """The CT files of a folder: its images but the label masks beside them (``*_msk.nii.gz``, ``*_seg-vert_*``,
    the data sources' naming), which are not CTs to predict on."""
    return [p for p in image_files(folder) if not is_mask_name(p.name)]


def output_name(ct: Path, fmt: str) -> str:
    """``sub-01_ct.nii.gz`` -> ``sub-01_ctd.json`` (VerSe's naming), ``scan.mha`` -> ``scan_ctd.csv``."""
    stem = ct.name[: -len(image_suffix(ct))].removesuffix("_ct")
    return f"{stem}_ctd.{'json' if fmt == 'verse' else 'csv'}"


def predict_file(predictor: Predictor, ct: Path, out: Path, fmt: str, preview: bool) -> None:
    centroids, geometry, original = predictor(ct)
    written = centroids.verse_numbered() if fmt == "verse" else centroids
    write_centroids(out, written, fmt=fmt, geometry=geometry)
    print(f"{predictor.method}: wrote {len(written)} centroids ({', '.join(written.names) or 'none'}) to {out}")
    if len(written) < len(centroids):
        print("S2 has no VerSe id and is not in the json; write .csv to keep it")
    if preview:
        png = Path(out).with_suffix(".png")
        write_preview(png, *preview_volume(original, geometry), centroids, title=f"{Path(ct).name} — {predictor.method}")
        print(f"preview: {png}")


def predict_folder(predictor: Predictor, folder: Path, out: Path, fmt: str, preview: bool) -> list[Path]:
    """Every CT file of ``folder`` into the folder ``out``; a bad CT is reported in one line and the others go
    on (what was written stays). Returns the CTs that failed."""
    cts = ct_files(folder)
    masks = len(image_files(folder)) - len(cts)
    if masks:
        print(f"{folder}: {len(cts)} CTs; {masks} label mask{'s' if masks > 1 else ''} beside them left out")
    ensure_folder(out)
    failed = []
    for i, ct in enumerate(cts, start=1):
        print(f"[{i}/{len(cts)}] {ct.name}", flush=True)
        try:
            predict_file(predictor, ct, out / output_name(ct, fmt), fmt, preview)
        except InputError as exc:
            failed.append(ct)
            print(f"spinebench predict: error: {exc}", file=sys.stderr)
    print(f"{len(cts) - len(failed)} of {len(cts)} CTs predicted into {out}")
    return failed


def preview_volume(original, geometry):
    """The input CT (a SimpleITK image) at its own resolution in canonical orientation, and its geometry: what the
    preview draws (not the run's network grid, on which a spine at 8 mm cannot be recognised)."""
    return reorient_canonical(sitk.GetArrayViewFromImage(original), geometry)


def write_preview(path: Path, image, geometry, centroids, title: str = "") -> None:
    """Sagittal and coronal maximum-intensity projections of a canonical (``reorient_canonical``) HU volume with
    the predicted centroids, voxels at their true aspect, bone window -250..1250 HU (``leaderboard.projections``)."""
    names = list(centroids)
    vox = np.array([geometry.world_to_vox(centroids[n]) for n in names]).reshape(-1, 3)
    write_bytes_atomic(path, volume_views_png(image, geometry.spacing_mm, predicted=vox, names=names, caption=title))

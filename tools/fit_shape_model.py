"""Fit the phantom's statistical spine-shape model from the real centroid tables beside the project.

    .venv/bin/python tools/fit_shape_model.py [--real ../shared/data/real] [--out datamodules/data/spine_shape_model.npz]

The model describes a spine as the 25 offset vectors between consecutive centroids C1->C2, ..., S1->S2
(LPS mm: x left, y posterior, z superior; every table below is already in that frame). Offsets are
translation-invariant, so the constant ~13 mm posterior shift of VerSe'20 whole-vertebra centres of mass
against body centroids cancels, and scans that show only part of the spine still contribute the levels
they show. Missing offsets (NaN) are handled by iterative low-rank PCA imputation (EM-style): fill with
column means, fit a rank-r PCA, refill the missing entries from the reconstruction, repeat. Left/right
mirrored copies of every scan are added, because the x direction of the CSI-2014 table is unverified and
scoliosis occurs to both sides.

Sources (the raw tables stay in ../shared; only the fitted statistics are committed):
- CSI-2014 / SpineWeb dataset 2 centroid table via christianpayer/MedicalDataAugmentationTool-HeatmapRegression (GPL-3.0)
- VerSe'19 / VerSe'20 landmark tables via christianpayer/MedicalDataAugmentationTool-VerSe (GPL-3.0); VerSe data CC BY-SA 4.0
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from spinebench.datamodules.atomic import atomic_path  # noqa: E402
from spinebench.datamodules.labels import DEFAULT_NAMES  # noqa: E402

RANK = 8  # principal modes kept; the first 8 explain most of the posture variance (see SHAPE_MODEL.md)
EM_ITERATIONS = 100
# An offset whose length is outside [0.5, 1.6] x the level's median, or that does not go down, is an
# annotation error (swapped or mislabelled level) rather than anatomy.
LENGTH_RATIO_RANGE = (0.5, 1.6)

VERSE_ORDER = tuple(f"C{i}" for i in range(1, 8)) + tuple(f"T{i}" for i in range(1, 13)) + tuple(
    f"L{i}" for i in range(1, 7)
)  # VerSe tables: index 0-24 = C1..L6, VerSe'20 index 25 = T13


def _read_rows(path: Path) -> dict[str, np.ndarray]:
    rows = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            values = np.array([float(v) for v in row[1:]], dtype=np.float64)
            rows[row[0].strip()] = values.reshape(-1, 3)
    return rows


def load_tables(real: Path) -> tuple[list[dict[str, np.ndarray]], dict[str, int]]:
    """All scans as {vertebra name: (3,) LPS mm} (absent levels left out), and the number of scans per source."""
    scans: list[dict[str, np.ndarray]] = []
    counts = {}
    csi = _read_rows(real / "csi2014_landmarks_payer" / "points_world_coordinates.csv")
    for pts in csi.values():
        scans.append({n: p for n, p in zip(DEFAULT_NAMES, pts) if np.all(np.isfinite(p))})
    counts["csi2014"] = len(csi)
    v19 = _read_rows(real / "verse_landmarks_payer" / "verse2019" / "landmarks.csv")
    v20 = _read_rows(real / "verse_landmarks_payer" / "verse2020" / "landmarks.csv")
    # The same scan in both tables: keep VerSe'19 (body centroids, like CSI-2014).
    v20 = {k: v for k, v in v20.items() if k not in v19}
    for table, key in ((v19, "verse2019"), (v20, "verse2020_not_in_2019")):
        for pts in table.values():
            names = VERSE_ORDER + (("T13",) if len(pts) > len(VERSE_ORDER) else ())
            scans.append({n: p for n, p in zip(names, pts) if np.all(np.isfinite(p))})
        counts[key] = len(table)
    return scans, counts


def offset_matrix(scans: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """(N, 25, 3) offsets between consecutive default levels (NaN where missing) and transitional offsets."""
    n_off = len(DEFAULT_NAMES) - 1
    out = np.full((len(scans), n_off, 3), np.nan)
    transitional: dict[str, list[np.ndarray]] = {"T12->T13": [], "T13->L1": [], "L5->L6": []}
    for i, s in enumerate(scans):
        for k in range(n_off):
            a, b = DEFAULT_NAMES[k], DEFAULT_NAMES[k + 1]
            if a in s and b in s:
                if (a, b) == ("T12", "L1") and "T13" in s:
                    continue
                if (a, b) == ("L5", "S1") and "L6" in s:
                    continue
                out[i, k] = s[b] - s[a]
        if "T13" in s and "T12" in s:
            transitional["T12->T13"].append(s["T13"] - s["T12"])
        if "T13" in s and "L1" in s:
            transitional["T13->L1"].append(s["L1"] - s["T13"])
        if "L6" in s and "L5" in s:
            transitional["L5->L6"].append(s["L6"] - s["L5"])
    return out, transitional


def reject_outliers(offsets: np.ndarray) -> tuple[np.ndarray, int]:
    offsets = offsets.copy()
    length = np.linalg.norm(offsets, axis=-1)  # (N, 25), NaN where missing
    median = np.nanmedian(length, axis=0)
    lo, hi = LENGTH_RATIO_RANGE
    bad = np.isfinite(length) & ((length < lo * median) | (length > hi * median) | (offsets[..., 2] >= 0))
    offsets[bad] = np.nan
    return offsets, int(bad.sum())


def em_pca(x: np.ndarray, rank: int, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Low-rank PCA of ``x`` (N, D) with NaNs: returns mean (D,), components (rank, D), component std (rank,),
    residual std (D,) measured on the observed entries."""
    observed = np.isfinite(x)
    mean = np.nanmean(x, axis=0)
    filled = np.where(observed, x, mean)
    for _ in range(iterations):
        mean = filled.mean(axis=0)
        u, s, vt = np.linalg.svd(filled - mean, full_matrices=False)
        recon = mean + (u[:, :rank] * s[:rank]) @ vt[:rank]
        filled = np.where(observed, x, recon)
    mean = filled.mean(axis=0)
    u, s, vt = np.linalg.svd(filled - mean, full_matrices=False)
    components = vt[:rank]
    # A deterministic sign per component: its largest-magnitude entry is positive.
    signs = np.sign(components[np.arange(rank), np.argmax(np.abs(components), axis=1)])
    components = components * signs[:, None]
    std = s[:rank] / np.sqrt(len(x) - 1)
    recon = mean + (filled - mean) @ components.T @ components
    resid = np.where(observed, x - recon, np.nan)
    resid_std = np.sqrt(np.nanmean(resid**2, axis=0))
    return mean, components, std, resid_std


def fit(real: Path) -> dict[str, np.ndarray]:
    # One BLAS thread: the 936 x 75 SVDs are tiny, and threads only contend on a busy machine.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit(real)


def _fit(real: Path) -> dict[str, np.ndarray]:
    scans, counts = load_tables(real)
    offsets, transitional = offset_matrix(scans)
    offsets, n_rejected = reject_outliers(offsets)
    keep = np.isfinite(offsets[..., 0]).sum(axis=1) >= 2
    offsets = offsets[keep]
    mirrored = offsets * np.array([-1.0, 1.0, 1.0])
    x = np.concatenate([offsets, mirrored]).reshape(2 * len(offsets), -1)
    mean, components, std, resid_std = em_pca(x, RANK, EM_ITERATIONS)
    model = {
        "level_names": np.array(DEFAULT_NAMES),
        "mean_offsets_mm": mean.reshape(-1, 3),
        "components": components.reshape(RANK, -1, 3),
        "component_std_mm": std,
        "residual_std_mm": resid_std.reshape(-1, 3),
        "observed_count": np.isfinite(offsets[..., 0]).sum(axis=0),
        "n_scans": np.array(int(keep.sum())),
        "n_rejected_offsets": np.array(n_rejected),
        "source_names": np.array(list(counts)),
        "source_scan_counts": np.array(list(counts.values())),
    }
    for key, values in transitional.items():
        arr = np.asarray(values).reshape(-1, 3)
        arr = np.concatenate([arr, arr * np.array([-1.0, 1.0, 1.0])])
        tag = key.replace("->", "_to_")
        model[f"transitional_{tag}_mean_mm"] = arr.mean(axis=0)
        model[f"transitional_{tag}_std_mm"] = arr.std(axis=0)
        model[f"transitional_{tag}_count"] = np.array(len(values))
    return {k: np.asarray(v) for k, v in model.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "datamodules" / "data" / "spine_shape_model.npz")
    args = parser.parse_args(argv)
    model = fit(args.real)
    # Rounded to 1 um / 1e-6 so the committed file is stable across LAPACK builds.
    model = {k: (np.round(v, 6) if v.dtype.kind == "f" else v) for k, v in model.items()}
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **model)
    print(f"wrote {args.out}: {int(model['n_scans'])} scans, rank {RANK}, "
          f"{int(model['n_rejected_offsets'])} outlier offsets rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())

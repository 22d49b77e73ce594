"""DI2IN family: whole-volume inference per case (small and paper presets), message passing and sparsity cost.

A typical partial-spine case at 2 mm is about 160 x 112 x 112 voxels. Network weights are the seeded initial
ones (timing does not depend on training). Message passing and sparsity are timed on realistic inputs: 26
Gaussian heatmaps of a 10-vertebra chain, kernels and dictionary fitted from the CSI-2014 training centroid
table (242 spines, converted to 2 mm voxels) when ../shared/data/real is present, else from phantom spines.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import timed, write_fragment  # noqa: E402

from datamodules.targets import gaussian_heatmaps  # noqa: E402
from methods.registry import create_method  # noqa: E402

VOLUME_VOX = (160, 112, 112)
CSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "csi2014_landmarks_payer"


def training_centroids() -> tuple[np.ndarray, str]:
    """(N, 26, 3) centroids in 2 mm voxels, numpy order (axis 0 superior), NaN = absent."""
    if (CSI / "points_world_coordinates.csv").is_file():
        rows = {}
        for line in (CSI / "points_world_coordinates.csv").read_text().splitlines():
            parts = line.split(",")
            rows[parts[0]] = np.array(parts[1:], dtype=np.float64).reshape(26, 3)
        ids = (CSI / "train_all.txt").read_text().split()
        return np.stack([rows[i] for i in ids])[..., ::-1] / 2.0, "CSI-2014 train_all (242 spines)"
    from datamodules.labels import get_label_set
    from datamodules.phantom import PhantomConfig, generate_case

    out = []
    for i in range(20):
        case = generate_case(0, i, PhantomConfig(spacing_mm=4.0, with_mask=False))
        world = case.centroids_mm.to_array(get_label_set("default"))
        out.append(case.geometry.world_to_vox(world) * 2.0)  # 4 mm voxels -> 2 mm voxels
    return np.stack(out), "20 phantom spines"


def case_heatmaps(train: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Heatmaps of a 10-vertebra chain (T6-L4 shape of a training spine) placed inside the volume."""
    levels = np.arange(13, 23)
    shape = train[np.argmax((~np.isnan(train[:, levels, 0])).sum(1))][levels]
    shape = np.nan_to_num(shape - np.nanmean(shape, axis=0)) + np.array(VOLUME_VOX) / 2.0
    centroids = np.zeros((26, 3))
    centroids[levels] = shape
    present = np.zeros(26, bool)
    present[levels] = True
    heat = gaussian_heatmaps(torch.from_numpy(centroids)[None], torch.from_numpy(present)[None], VOLUME_VOX, 2.0)
    return heat[0], centroids, present


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    image = torch.randn(1, 1, *VOLUME_VOX)
    rows = []
    for preset, extra in (("small", {"channels_last": False}), ("small", {}), ("paper", {})):
        method = create_method("di2in", preset=preset, **extra).eval()
        seconds, pred = timed(lambda: method.predict_volume(image), repeat=1 if preset == "paper" else args.repeat)
        params = sum(p.numel() for p in method.parameters()) / 1e6
        label = preset + (", contiguous memory format" if extra else ", channels_last_3d (default)")
        rows.append(f"| di2in inference, preset {label} ({params:.2f} M parameters) | {seconds:.2f} s |")
        print(rows[-1], flush=True)

    train, source = training_centroids()
    heat, truth, present = case_heatmaps(train)
    mp_method = create_method("di2in_mp")
    mp_method.fit_shape_prior(train)
    plain = create_method("di2in")
    t_plain, _ = timed(lambda: plain.locate(heat), repeat=5)
    t_mp, (coords, _) = timed(lambda: mp_method.locate(heat), repeat=5)
    coarse = mp_method._coarse(heat)[None]
    t_pass, _ = timed(lambda: mp_method.mp(coarse), repeat=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small FFTs: on a busy 2-core machine one thread beats two by far
    t_pass_1, _ = timed(lambda: mp_method.mp(coarse), repeat=10)
    torch.set_num_threads(threads)
    err = np.abs(coords[present] - truth[present]).max()
    kernel = tuple(mp_method.mp.kernels.shape[2:])
    rows.append(f"| message passing alone, {mp_method.config.mp_iterations} iterations on the "
                f"{'×'.join(map(str, coarse.shape[2:]))} grid (stride {mp_method.config.mp_stride}, "
                f"kernels {'×'.join(map(str, kernel))}), {threads} torch threads / 1 thread | "
                f"{t_pass:.3f} s / {t_pass_1:.3f} s |")  # fmt: skip
    rows.append(f"| decoding with message passing (pool + passing + full-resolution snap) | {t_mp:.3f} s |")
    rows.append(f"| decoding without message passing (argmax + sub-voxel) | {t_plain:.3f} s |")
    assert err < 0.5, f"decoding moved a confident centroid by {err} voxels"

    sparse = create_method("di2in_mp_sparsity")
    sparse.fit_shape_prior(train)
    noisy = truth.copy()
    noisy[17, 0] += 30.0  # one outlier
    t_sparse, _ = timed(lambda: sparse.shape_dictionary.refine(noisy, present), repeat=5)
    atoms = sparse.shape_dictionary.atoms.shape[2]
    rows.append(f"| sparsity refinement (DP + 3 Lasso fits, {atoms} atoms, 10 present) | {t_sparse:.4f} s |")
    for row in rows[3:]:
        print(row)
    markdown = (
        "## DI2IN family\n\n"
        f"Per case, whole volume {'×'.join(map(str, VOLUME_VOX))} voxels (2 mm), CPU, seeded untrained weights. "
        f"Kernels and dictionary from {source}. Targets: message passing < 0.1 s, sparsity < 0.05 s. "
        f"Best of several runs; the machine is shared (1-min load average at the end: {os.getloadavg()[0]:.1f}), "
        "so figures are upper bounds.\n\n"
        "| what | seconds per case |\n|---|---|\n" + "\n".join(rows) + "\n"
    )
    write_fragment("di2in", markdown)


if __name__ == "__main__":
    main()

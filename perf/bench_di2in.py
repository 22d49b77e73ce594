"""DI2IN family: whole-volume inference per case, training steps, message passing and sparsity cost.

A typical partial-spine case at 2 mm is about 160 x 112 x 112 voxels. Network weights are the seeded initial
ones (timing does not depend on training). Network figures are side by side with the literal network
(``DI2INNet.literal_forward``: F.conv3d, every branch upsampled, the plain loss over full-size maps) and with
what this CPU achieves on one large conv3d; FLOPs are counted with ``torch.utils.flop_counter`` on the literal
network (convolutions and 1x1x1 mixing; resizing is not counted). Message passing and sparsity are timed on
realistic inputs: 26 Gaussian heatmaps of a 10-vertebra chain, kernels and dictionary fitted from the CSI-2014
training centroid table (242 spines, converted to 2 mm voxels) when ../shared/data/real is present, else from
phantom spines.
"""

from __future__ import annotations

import argparse
import ast
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import achievable_gflops, flops, timed, write_fragment  # noqa: E402  (first: it sets the allocator's env before torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spinebench.benchmark.allocator import MALLOC_ENV  # noqa: E402
from spinebench.datamodules.targets import gaussian_heatmaps  # noqa: E402
from spinebench.methods.registry import create_method  # noqa: E402

VOLUME_VOX = (160, 112, 112)
TRAIN_VOX = (80, 32, 32)  # the default run's 8 mm whole-volume batches: 2 volumes, padded to a multiple of 8
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
    from spinebench.datamodules.labels import get_label_set
    from spinebench.datamodules.phantom import PhantomConfig, generate_case

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


def inference_seconds(preset: str, literal: bool, repeat: int) -> tuple[float, float]:
    """(best seconds, counted GFLOP) of one whole-volume DI2IN inference."""
    torch.manual_seed(0)
    method = create_method("di2in", preset=preset, channels_last=not literal).eval()
    image = torch.randn(1, 1, *VOLUME_VOX)
    run = (lambda: method.net.literal_forward(image)) if literal else (lambda: method.predict_heatmaps(image))
    with torch.no_grad():
        seconds, _ = timed(run, repeat=repeat)
        return seconds, flops(lambda: method.net.literal_forward(image)) / 1e9


def training_step_seconds(literal: bool, steps: int = 6, bfloat16: bool = False) -> tuple[float, float, float]:
    """(median seconds, counted GFLOP, minor page faults per step) of one optimiser step of the default recipe
    (small preset, batch 2); the faults are counted over the timed steps (``getrusage``). ``bfloat16``: the loss
    computed under CPU bfloat16 autocast (float32 weights and optimiser)."""
    torch.manual_seed(0)
    method = create_method("di2in", preset="small", sigma_vox=1.5, foreground_weight=50.0, channels_last=not literal)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 1, *TRAIN_VOX, generator=g), "present": torch.rand(2, 26, generator=g) > 0.4,
             "centroids_vox": torch.rand(2, 26, 3, generator=g) * torch.tensor(TRAIN_VOX)}
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)

    def literal_loss():
        final, branches = method.net.literal_forward(batch["image"])
        target = gaussian_heatmaps(batch["centroids_vox"], batch["present"], TRAIN_VOX, 1.5)
        weight = 1.0 + 49.0 * target
        return sum((weight * (b - target) ** 2).mean() for b in [final, *branches])

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            loss = literal_loss() if literal else method.training_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: first-touch allocations, oneDNN's kernel choice
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = [timed(step, repeat=1)[0] for _ in range(steps)]
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    counted = flops(lambda: literal_loss().backward()) / 1e9
    return float(np.median(times)), counted, faults


def bfloat16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX), where autocast could pay off."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def in_fresh_process(expression: str, env: dict[str, str]):
    """The value (numbers, or a tuple of them) that ``expression`` (over this module as ``b``) evaluates to in a fresh
    process with ``env``."""
    code = ("import sys; sys.path.insert(0, 'perf'); sys.argv = ['x']; import bench_di2in as b, torch; "
            f"torch.set_num_threads(1); print({expression})")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def thp_off_inference() -> float:
    """Fast small-preset inference in a fresh process with huge-page allocation off (4 kB pages)."""
    return in_fresh_process("b.inference_seconds('small', False, 2)[0]", dict(os.environ, THP_MEM_ALLOC_ENABLE="0"))


def malloc_default_training_step() -> tuple[float, float, float]:
    """``training_step_seconds`` of the fast step in a fresh process with glibc's malloc defaults
    (``benchmark.allocator`` not applied)."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env["GLIBC_TUNABLES"] = ""  # empty: glibc's defaults, and configure_allocator leaves malloc alone
    return in_fresh_process("b.training_step_seconds(False)", env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process: the fastest setting on this 2-core machine
    peak = achievable_gflops()
    rows = [f"| one large conv3d (32 -> 32 channels, 64^3, channels_last_3d): achievable | {peak:.1f} GFLOP/s | 1.00 |"]
    for preset, literal in (("small", True), ("small", False), ("paper", False)):
        seconds, gflop = inference_seconds(preset, literal, 1 if preset == "paper" else args.repeat)
        what = "literal network" if literal else "spinebench"
        rows.append(f"| inference {'x'.join(map(str, VOLUME_VOX))}, preset {preset}, {what} ({gflop:.1f} GFLOP) | "
                    f"**{seconds:.2f} s**, {gflop / seconds:.1f} GFLOP/s | {gflop / seconds / peak:.2f} |")
        print(rows[-1], flush=True)
    rows.append(f"| inference, preset small, spinebench, 4 kB pages (THP_MEM_ALLOC_ENABLE=0) | "
                f"{thp_off_inference():.2f} s | |")
    for literal in (True, False):
        seconds, gflop, faults = training_step_seconds(literal)
        what = "literal network and loss" if literal else "spinebench"
        rows.append(f"| training step, default recipe (2 x {'x'.join(map(str, TRAIN_VOX))}, small), {what} "
                    f"({gflop:.1f} GFLOP) | **{seconds:.3f} s**, {gflop / seconds:.1f} GFLOP/s | "
                    f"{gflop / seconds / peak:.2f} |")
        print(rows[-1], flush=True)
    fast_faults = faults  # the last row is the fast step
    seconds, _, default_faults = malloc_default_training_step()
    rows.append(f"| training step, spinebench, glibc malloc defaults (no `benchmark.allocator`) | {seconds:.3f} s | |")
    rows.append(f"| minor page faults per training step, spinebench: `benchmark.allocator` / glibc malloc defaults | "
                f"{fast_faults:.0f} / {default_faults:.0f} | |")
    print(rows[-1], flush=True)
    if bfloat16_supported():  # the alternative a CPU with bfloat16 units offers; not what spinebench runs
        bf16_peak = achievable_gflops(bfloat16=True)
        rows.append(f"| one large conv3d under bfloat16 autocast (for comparison) | {bf16_peak:.1f} GFLOP/s | "
                    f"{bf16_peak / peak:.2f} |")
        rows.append(f"| training step, spinebench, bfloat16 autocast (for comparison) | "
                    f"{training_step_seconds(False, bfloat16=True)[0]:.3f} s | |")
        print(rows[-1], flush=True)
    network_rows, rows = rows, []

    train, source = training_centroids()
    heat, truth, present = case_heatmaps(train)
    mp_method = create_method("di2in_mp")
    mp_method.fit_shape_prior(train)
    plain = create_method("di2in")
    t_plain, _ = timed(lambda: plain.locate(heat), repeat=5)
    t_mp, (coords, _) = timed(lambda: mp_method.locate(heat), repeat=5)
    coarse = mp_method._coarse(heat)[None]
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t_pass, _ = timed(lambda: mp_method.mp(coarse), repeat=10)
    torch.set_num_threads(1)  # small FFTs: on a busy 2-core machine one thread beats two by far
    t_pass_1, _ = timed(lambda: mp_method.mp(coarse), repeat=10)
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
    for row in rows:
        print(row)
    markdown = (
        "## DI2IN family\n\n"
        f"One torch thread. Inference: whole volume {'×'.join(map(str, VOLUME_VOX))} voxels (2 mm), seeded "
        "untrained weights, best of runs; training: median step of the default recipe's batches. The last column "
        "is the fraction of the achievable conv throughput (targets: >= 0.35 and small inference <= 1.5 s). The "
        "literal rows are the same network computed as drawn, for reference, not an older spinebench.\n\n"
        "| what | time | of achievable |\n|---|---|---|\n" + "\n".join(network_rows) + "\n\n"
        f"Decoding per case, kernels and dictionary from {source}. Targets: message passing < 0.1 s, "
        "sparsity < 0.05 s.\n\n"
        "| what | seconds per case |\n|---|---|\n" + "\n".join(rows) + "\n"
    )
    write_fragment("di2in", markdown)


if __name__ == "__main__":
    main()

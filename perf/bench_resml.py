"""Residual multi-label network: whole-CT inference per case, crops per second and clustering cost.

A typical partial-spine case at 2 mm is about 160 x 112 x 112 voxels. The network weights are the seeded
initial ones (timing does not depend on training). Side by side: the same network computed with PyTorch's
plain operators (``ResMLNet.literal_forward``: ``F.conv3d``, ``F.max_pool3d``, ``F.interpolate``, softmax and
three marginals), the reference the fast path is tested against. Clustering is timed in its worst case: every
crop votes for every one of the 26 vertebrae (26 K-means runs over all crops), and on the untrained network's
votes.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import REPO_ROOT, achievable_gflops, flops, timed, write_fragment  # first: sets the allocator's huge pages

import numpy as np
import torch

sys.path.insert(0, str(REPO_ROOT))

from spinebench.methods.crop_inference import aggregate_crops, crop_votes, run_crops  # noqa: E402
from spinebench.methods.registry import create_method  # noqa: E402

VOLUME_VOX = (160, 112, 112)


def measure(name: str, preset: str, repeat: int) -> dict:
    torch.manual_seed(0)
    method = create_method(name, preset=preset).eval()
    c = method.config
    crop = tuple(c.crop_size_vox)
    image = torch.randn(1, 1, *VOLUME_VOX)
    method.predict_volume(image[..., : crop[0], : crop[1], : crop[2]])  # warm-up: one crop
    # predict_volume = run_crops -> crop_votes -> aggregate_crops; timed step by step on the same data
    t_net, outputs = timed(
        lambda: run_crops(image, method.predict_crops, crop, c.tile_overlap, method.crops_per_pass()), repeat=repeat
    )

    def literal(crops):
        out = method.net.literal_forward(crops)
        return out["coords_vox"], torch.sigmoid(out["logits"]) if "logits" in out else None

    t_literal, _ = timed(lambda: run_crops(image, literal, crop, c.tile_overlap, method.crops_per_pass()), repeat=repeat)
    t_vote, votes = timed(lambda: crop_votes(outputs, crop, VOLUME_VOX, c.presence_threshold, c.border_margin_vox))
    cluster = dict(n_clusters=c.n_clusters, merge_radius_vox=c.merge_radius_vox, min_support=c.min_support)
    t_votes, _ = timed(lambda: aggregate_crops(outputs, votes, crop, **cluster), repeat=3)
    t_all, _ = timed(lambda: aggregate_crops(outputs, np.ones_like(votes), crop, **cluster), repeat=3)
    t_case = t_net + t_vote + t_votes
    n_crops = len(outputs.origins_vox)
    return {
        "name": name,
        "preset": preset,
        "crop": "x".join(map(str, crop)),
        "params": sum(p.numel() for p in method.parameters()) / 1e6,
        "crops": n_crops,
        "case_s": t_case,
        "literal_case_s": t_literal + t_vote + t_votes,
        "batch": method.crops_per_pass(),
        "crops_per_s": n_crops / t_net,
        "cluster_all_ms": 1e3 * t_all,
        "cluster_votes_ms": 1e3 * t_votes,
        "votes": int(votes.sum()),
        # one forward pass of the crops of one case, counted on the literal network (same arithmetic)
        "gflop": flops(lambda: [method.net.literal_forward(image[..., :crop[0], :crop[1], :crop[2]])
                                for _ in range(n_crops)]) / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared CPU)")
    parser.add_argument("--quick", action="store_true", help="small preset only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [("resml_cls_bilstm", "small", 3), ("resml_loc", "small", 3)]
    if not args.quick:
        runs += [("resml_cls_bilstm", "paper", 1), ("resml_loc", "paper", 1)]
    peak = achievable_gflops()
    rows = []
    for name, preset, repeat in runs:
        start = time.perf_counter()
        with torch.no_grad():
            r = measure(name, preset, repeat)
        print(r, f"({time.perf_counter() - start:.0f} s)", flush=True)
        net_s = r["crops"] / r["crops_per_s"]
        rows.append(
            f"| `{r['name']}` | {r['preset']} | {r['params']:.2f} M | {r['crop']} | {r['crops']} ({r['batch']} a pass) | "
            f"**{r['case_s']:.2f} s** | {r['literal_case_s']:.2f} s | {r['literal_case_s'] / r['case_s']:.1f}x | "
            f"{r['gflop'] / net_s:.1f} GFLOP/s, {r['gflop'] / net_s / peak:.2f} | "
            f"{r['cluster_all_ms']:.0f} ms | {r['cluster_votes_ms']:.0f} ms ({r['votes']} votes) |"
        )
    command = ".venv/bin/python perf/bench_resml.py" + (f" --threads {args.threads}" if args.threads != 1 else "")
    write_fragment(
        "resml",
        "## Residual multi-label network: whole-CT inference (CPU)\n\n"
        f"One case of {'x'.join(map(str, VOLUME_VOX))} voxels (a typical partial spine at 2 mm), crops tiled with "
        f"the default 50 % overlap, torch threads = {args.threads}, seeded untrained weights (timing does not depend "
        "on training). *Per case* = tiling + network + K-means voting (network: best of 1-3 runs, wall time). "
        "*Literal*: the same network and rule with the network computed by PyTorch's plain operators "
        "(`ResMLNet.literal_forward`; tests hold the two equal). Throughput: FLOPs of the crops' forward passes "
        "(`torch.utils.flop_counter`) per second of network time, and its fraction of one large conv3d's "
        f"achievable {peak:.1f} GFLOP/s on this machine. *Clustering, worst case*: every crop votes for all 26 "
        "vertebrae; *on votes*: the untrained network's votes. Target: small preset <= 3 s per case.\n\n"
        "| method | preset | parameters | crop (vox) | crops per case | per case | literal | speed-up | network "
        "throughput, of achievable | clustering, worst case | clustering on votes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows),
        command=command,
    )


if __name__ == "__main__":
    main()

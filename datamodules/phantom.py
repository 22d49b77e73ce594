"""Synthetic spine CT phantom: the embedded default dataset.

``generate_case(seed, index, config)`` draws one case, deterministically from ``(seed, index)``: a spine curve
sampled from the statistical shape model (``datamodules.shape_model``), optional curvature deformities, the anatomy
(the spine in ``datamodules.phantom_anatomy``; torso, lungs, ribs and iliac wings in ``datamodules.phantom_trunk``;
organs, hips, sternum, table and bone texture in ``datamodules.phantom_organs``), the acquisition difficulties
(``datamodules.phantom_artifacts``), then the scanner, the crop and the annotation (``datamodules.phantom_scanner``);
its settings are ``phantom_config``. Every random draw comes from a ``numpy.random.Generator(PCG64)`` seeded with
``[seed, index]`` (the organs' with ``[seed, index, 1]``, the bone texture's with ``[seed, index, 2]``, the scan
window's with ``[seed, index, 3]``, version 5's vertebra detail with ``[seed, index, 4]``, so switching them off
leaves every other draw as it was), drawn in a fixed order, and all per-voxel arithmetic is
IEEE-exact, so the same ``(seed, index, config)`` gives byte-identical output on any machine with the same
numpy/scipy.

The volume is in the canonical orientation (array axes grow towards superior, posterior, left), HU as int16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from spinebench.datamodules import phantom_anatomy as anat
from spinebench.datamodules import phantom_artifacts as art
from spinebench.datamodules import phantom_organs as organs
from spinebench.datamodules import phantom_scanner as scanner
from spinebench.datamodules import phantom_trunk as trunk
from spinebench.datamodules.centroids import Centroids
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.phantom_config import (  # noqa: F401  (re-exported: this module's API too)
    MAX_SPACING_MM,
    PhantomConfig,
    case_voxels,
    check_resources,
    supersampling,
)
from spinebench.datamodules.shape_model import load_shape_model

GENERATOR_VERSION = 5  # 3: organs, bowel gas, vessels, hips, sternum, costal cartilage, table, bone texture;
#                        4: vertebra HU, sizes, pedicles, body and spinous shapes fitted to real lumbar masks;
#                        5: subchondral bone, basivertebral foramen, canal contents (``vertebra_detail``)
NOISE_CORRELATION_MM = 1.0  # sigma of the Gaussian that correlates the noise (texture=True)
METAL_THRESHOLD_HU = 3000.0


@dataclass(eq=False)
class PhantomCase:
    case_id: str
    ct_hu: np.ndarray  # int16 HU, canonical orientation (S, P, L)
    geometry: Geometry
    centroids_mm: Centroids  # LPS mm, the vertebrae whose centroid lies inside the volume
    vertebra_mask: np.ndarray | None  # uint8 labels, anat.PHANTOM_MASK_ID (VerSe ids; S2 = 29)
    metadata: dict = field(default_factory=dict)


def case_id(seed: int, index: int) -> str:
    return f"phantom-s{seed}-{index:04d}"


def _bump(pos: np.ndarray, lo: float, hi: float, waves: int) -> np.ndarray:
    """sin(waves * pi * t) for t = (pos - lo)/(hi - lo) in [0, 1], 0 outside; rounded for reproducibility."""
    t = np.clip((pos - lo) / (hi - lo), 0.0, 1.0)
    return np.round(np.sin(waves * np.pi * t), 9)


def _deform(rng, cfg: PhantomConfig, pos: np.ndarray, spl: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Scoliosis (lateral C or S curve with axial rotation) and abnormal sagittal curvature on the (n, 3) curve."""
    draws = rng.random(8)
    axial_rot = np.zeros(len(pos))
    sco = {"applied": bool(draws[0] < cfg.scoliosis_rate)}
    if sco["applied"]:
        waves = 1 if draws[1] < 0.6 else 2
        amp = cfg.scoliosis_amplitude_mm[0] + draws[2] * np.diff(cfg.scoliosis_amplitude_mm)[0]
        amp *= 1.0 if draws[3] < 0.5 else -1.0
        lo, hi = (7.0 + 3.0 * draws[4], 21.0 + 3.0 * draws[5])  # from T1-T4 to L3-S1
        shift = amp * _bump(pos, lo, hi, waves)
        spl[:, 2] += shift
        axial_rot = np.clip(0.6 * shift, -25.0, 25.0)
        sco.update(kind="C" if waves == 1 else "S", amplitude_mm=round(float(amp), 3),
                   from_level=round(float(lo), 2), to_level=round(float(hi), 2))
    kyph = {"applied": bool(draws[6] < cfg.kyphosis_rate)}
    if kyph["applied"]:
        kind = ("hyperkyphosis", "hyperlordosis", "flat_back")[int(draws[7] * 3) % 3]
        amp = cfg.kyphosis_amplitude_mm[0] + rng.random() * np.diff(cfg.kyphosis_amplitude_mm)[0]
        if kind == "hyperkyphosis":
            spl[:, 1] += amp * _bump(pos, 7.0, 19.0, 1)  # thoracic curve bulges posteriorly
        elif kind == "hyperlordosis":
            spl[:, 1] -= 0.7 * amp * _bump(pos, 18.0, 24.0, 1)  # lumbar curve pushed anteriorly
        else:
            spl[:, 1] += 0.7 * amp * _bump(pos, 18.0, 24.0, 1)  # lumbar lordosis flattened
        kyph.update(kind=kind, amplitude_mm=round(float(amp), 3))
    meta["scoliosis"], meta["kyphosis"] = sco, kyph
    return spl, axial_rot


def _profiles(s_axis: np.ndarray, spl: np.ndarray, pos: np.ndarray, body_k: float, fat_mm: float, cfg) -> dict:
    """Per-slice torso and rib-cage parameters along axis 0 (array-order mm)."""
    order = np.argsort(spl[:, 0])
    s_c, p_c, l_c, pos_c = spl[order, 0], spl[order, 1], spl[order, 2], pos[order]
    spine_p, spine_l = np.interp(s_axis, s_c, p_c), np.interp(s_axis, s_c, l_c)
    level = np.interp(s_axis, s_c, pos_c)
    back, front = body_k * anat.size("torso_back", level), body_k * anat.size("torso_front", level)
    scale = np.minimum(1.0, cfg.body_max_depth_mm / (back + front))
    back, front = back * scale, front * scale
    rl = np.minimum(body_k * anat.size("torso_rl", level), cfg.body_max_width_mm / 2)
    rib_pos = np.clip(level, 7.0, 18.0)
    rib_a = body_k * anat.size("rib_a", rib_pos)
    return {
        "cp": spine_p + (back - front) / 2, "rp": (back + front) / 2,
        "cl": 0.5 * spine_l + 0.5 * float(np.mean(l_c)), "rl": rl,
        "fat": fat_mm * np.clip((level - 4.0) / 4.0, 0.4, 1.0),
        "spine_p": spine_p, "spine_l": spine_l,
        "rib_a": rib_a, "rib_b": body_k * anat.size("rib_b", rib_pos), "rib_pc": spine_p + 15.0 - 0.94 * rib_a,
    }


@dataclass(frozen=True)
class _Spine:
    """The drawn spine: vertebra names, centroids in array order (s, p, l) mm, level positions, poses."""

    names: list[str]
    spl: np.ndarray  # (n, 3)
    pos: np.ndarray  # (n,) level position, increasing downwards
    size_k: float
    poses: list


@dataclass(frozen=True)
class _FieldOfView:
    first: int  # first and last vertebra index inside the scan
    last: int
    top: float  # scan borders along s (mm)
    bottom: float


@dataclass(frozen=True)
class _Scan:
    """Per-case tissue values and acquisition settings."""

    tissue: dict[str, float]
    fat_mm: float
    body_k: float
    noise_hu: float
    blur_mm: float
    anisotropic: bool
    slice_factor: int


def generate_case(seed: int, index: int, config: PhantomConfig = PhantomConfig()) -> PhantomCase:
    """One case of ``(seed, index)``, in the steps below; each takes its random draws in this order."""
    rng = np.random.Generator(np.random.PCG64([int(seed), int(index)]))
    meta: dict = {"case_id": case_id(seed, index), "seed": int(seed), "index": int(index),
                  "generator_version": GENERATOR_VERSION, "config": asdict(config)}
    spine = _draw_spine(rng, config, meta)
    fov = _draw_field_of_view(rng, config, spine, meta)
    scan = _draw_scan(rng, config, meta)
    if config.vertebra_detail:  # a stream of its own: every other draw stays as without it
        _draw_vertebra_detail(np.random.Generator(np.random.PCG64([int(seed), int(index), 4])), scan.tissue, meta)
    framing = config
    window = config.scan_max_width_mm is not None or config.scan_max_depth_mm is not None
    if window and config.scan_window_rate < 1.0:  # a stream of its own: every other draw stays as without it
        window_rng = np.random.Generator(np.random.PCG64([int(seed), int(index), 3]))
        windowed = bool(window_rng.random() < config.scan_window_rate)
        meta["scan_window"] = {"applied": windowed}
        if not windowed:
            framing = replace(config, scan_max_width_mm=None, scan_max_depth_mm=None)
    canvas, prof = _make_canvas(framing, spine, fov, scan)
    # The organs draw from a stream of their own, so that every other draw is as without them.
    organ_rng = np.random.Generator(np.random.PCG64([int(seed), int(index), 1])) if config.organs else None
    _draw_anatomy(canvas, prof, spine, fov, scan.tissue, organ_rng, meta)
    if config.texture:
        texture_rng = np.random.Generator(np.random.PCG64([int(seed), int(index), 2]))
        organs.add_bone_texture(texture_rng, canvas, scan.tissue, meta)
    _add_metal(rng, canvas, config, spine, fov, prof, meta)
    points = scanner.mask_centres(canvas, spine.names, spine.spl) if config.centroids == "mask" else spine.spl
    correlation = NOISE_CORRELATION_MM if config.texture else 0.0
    ct, labels, geometry = scanner.acquire(rng, canvas, scan, supersampling(config), correlation, meta)
    if config.tight_crop_rate > 0:  # drawn last and only when asked: cases without it stay byte-identical
        ct, labels, geometry = scanner.tight_crop(rng, config, ct, labels, geometry, meta)
    inside = spine.spl if config.annotated == "body" else points  # the points that decide which are annotated
    centroids = scanner.visible_centroids(spine.names, points, geometry, meta, inside)
    meta["shape"], meta["spacing_mm"] = list(ct.shape), [float(x) for x in geometry.spacing_mm]
    meta["size_scale"] = round(float(spine.size_k), 4)
    meta["mask_ids"] = {nm: anat.PHANTOM_MASK_ID[nm] for nm in spine.names}
    return PhantomCase(meta["case_id"], ct, geometry, centroids, labels if config.with_mask else None, meta)


def _draw_vertebra_detail(rng, tissue: dict, meta: dict) -> None:
    """Generator version 5's tissue values: subchondral bone under the endplates, between the cancellous core and
    the cortex (45-75 % of the way to the cortex's value); a darker marrow (cancellous bone, ribs' and pelvis'
    included, x 0.70-0.85); the basivertebral veins; the canal's cerebrospinal fluid and fat (25-50 HU below soft
    tissue). ``anat.draw_vertebra`` also draws the arch ``anat.CANAL_DEPTH_FACTOR`` as deep with them.

    Fitted to the real lumbar vertebrae beside the project at sim2real's 4 mm (``perf/bench_realism.py``, lines
    through the mean neighbourhood): bright bands at the endplates (189 / 205 HU) around a dark middle (61-95 HU)
    where version 4's bodies read a flat 139-157 HU, a dark canal (17 HU against 51) with the midline lamina 4 mm
    nearer the body, and no bright posterior wall at mid-height (the foramen where the basivertebral veins leave
    the body), with the body core at 2 mm about as before (123 HU real)."""
    t = rng.random(4)
    tissue["cancellous"] *= 0.7 + 0.15 * t[0]
    tissue["subchondral"] = tissue["cancellous"] + (0.45 + 0.3 * t[1]) * (tissue["cortical"] - tissue["cancellous"])
    tissue["vein"] = tissue["soft"] + 10.0 * t[2]
    tissue["canal"] = tissue["soft"] - 25.0 - 25.0 * t[3]
    meta["tissue_hu"] = {k: round(float(v), 3) for k, v in tissue.items()}


def _draw_spine(rng, cfg: PhantomConfig, meta: dict) -> _Spine:
    """A transitional vertebra (opt-in), the shape model's curve, curvature deformities, size and poses."""
    draws = rng.random(4)
    transitional = None
    if draws[0] < cfg.transitional_rate:
        transitional = "T13" if draws[1] < 0.5 else "L6"
    meta["transitional"] = {"applied": transitional is not None, "name": transitional}
    curve = load_shape_model().sample_centroids(rng, transitional=transitional, mode_scale=cfg.shape_mode_scale)
    names = list(curve)
    spl = np.round(np.stack([curve[n][::-1] for n in names]), 6)  # LPS (x, y, z) -> array order (s, p, l)
    pos = np.array([anat.level_position(n) for n in names])
    spl, axial_rot = _deform(rng, cfg, pos, spl, meta)
    spl = np.round(spl, 6)
    size_k = cfg.size_scale[0] + draws[2] * (cfg.size_scale[1] - cfg.size_scale[0])
    return _Spine(names, spl, pos, size_k, anat.vertebra_poses(names, spl, axial_rot, size_k))


def _draw_field_of_view(rng, cfg: PhantomConfig, spine: _Spine, meta: dict) -> _FieldOfView:
    """The whole spine, or a section of it; borders fall between the last annotated centroid and the next one,
    so the outer vertebra may be cut."""
    n, s = len(spine.names), spine.spl[:, 0]
    draws = rng.random(4)
    limited = cfg.fov_vertebrae is not None or draws[0] < cfg.limited_fov_rate
    if limited:
        lo, hi = cfg.fov_vertebrae or (cfg.min_fov_vertebrae, n)
        lo, hi = min(lo, n), min(hi, n)
        n_vis = lo + int(draws[1] * (hi - lo + 1)) if hi > lo else lo
        first = int(draws[2] * (n - n_vis + 1))
    else:
        n_vis, first = n, 0
    last = first + n_vis - 1
    top = s[0] + 22.0 if first == 0 else s[first] + (0.15 + 0.7 * draws[3]) * (s[first - 1] - s[first])
    below_s2 = 75.0 if cfg.organs else 28.0  # with the hips drawn, a whole spine's scan reaches the femoral heads
    bottom = s[-1] - below_s2 if last == n - 1 else s[last] - (0.15 + 0.7 * draws[3]) * (s[last] - s[last + 1])
    meta["limited_fov"] = {"applied": bool(limited and n_vis < n), "n_vertebrae": n_vis}
    return _FieldOfView(first, last, top, bottom)


def _draw_scan(rng, cfg: PhantomConfig, meta: dict) -> _Scan:
    """Tissue HU, body build, noise, blur and slice thickness of this case."""
    t = rng.random(12)
    # Vertebra values fitted on a 2 mm grid to the 14 whole lumbar vertebrae of the six real CTs beside the project
    # (their masks; perf/bench_realism.py, "lumbar vertebra parts"): body core 123 HU (sd 29), body rim 263,
    # posterior elements 338-366 HU throughout their thin volume, brighter than the rim (compact bone, little marrow).
    tissue = {
        "air": -1000.0, "lung": -870.0 + 60.0 * t[0], "fat": -110.0 + 30.0 * t[1], "soft": 30.0 + 25.0 * t[2],
        "cortical": 200.0 + 250.0 * t[3], "cancellous": 60.0 + 120.0 * t[4], "disc": 70.0 + 25.0 * t[5],
    }
    tissue["posterior"] = 1.1 * tissue["cortical"]
    noise_hu = cfg.noise_hu[0] + t[8] * (cfg.noise_hu[1] - cfg.noise_hu[0])
    blur_mm = cfg.blur_sigma_mm[0] + t[9] * (cfg.blur_sigma_mm[1] - cfg.blur_sigma_mm[0])
    aniso = bool(t[10] < cfg.anisotropic_rate)
    f_lo, f_hi = cfg.anisotropic_factor
    factor = f_lo + int(t[11] * (f_hi - f_lo + 1)) if aniso else 1
    meta["tissue_hu"] = {k: round(float(v), 3) for k, v in tissue.items()}
    meta["noise"] = {"sigma_hu": round(float(noise_hu), 3)}
    meta["blur"] = {"sigma_mm": round(float(blur_mm), 3)}
    return _Scan(tissue, 8.0 + 17.0 * t[6], 0.95 + 0.1 * t[7], noise_hu, blur_mm, aniso, factor)


def _make_canvas(cfg: PhantomConfig, spine: _Spine, fov: _FieldOfView, scan: _Scan) -> tuple[anat.Canvas, dict]:
    """The isotropic generation grid around the torso and the torso's per-slice profiles: the case's grid
    (a multiple of the slice factor along s) refined ``supersampling`` times, so that averaging blocks of fine
    voxels gives the case's voxels."""
    sp, factor, f = float(cfg.spacing_mm), scan.slice_factor, supersampling(cfg)
    n_s = int(np.floor((fov.top - fov.bottom) / sp)) + 1
    n_s = max(n_s + (-n_s) % factor, factor)
    s_axis = fov.bottom + sp * np.arange(n_s)
    prof = _profiles(s_axis, spine.spl, spine.pos, scan.body_k, scan.fat_mm, cfg)
    lo_p, hi_p = np.min(prof["cp"] - prof["rp"]) - 6.0, np.max(prof["cp"] + prof["rp"]) + 6.0
    lo_l, hi_l = np.min(prof["cl"] - prof["rl"]) - 6.0, np.max(prof["cl"] + prof["rl"]) + 6.0
    lo_p = max(lo_p, hi_p - cfg.body_max_depth_mm - 12.0)
    mid_l = 0.5 * (lo_l + hi_l)
    half_l = min(0.5 * (hi_l - lo_l), cfg.body_max_width_mm / 2 + 6.0)
    lo_l, hi_l = mid_l - half_l, mid_l + half_l
    if cfg.scan_max_depth_mm is not None:
        lo_p = max(lo_p, float(np.min(prof["spine_p"])) - 0.45 * cfg.scan_max_depth_mm)
        hi_p = min(hi_p, float(np.max(prof["spine_p"])) + 0.55 * cfg.scan_max_depth_mm)
    if cfg.scan_max_width_mm is not None:
        lo_l = max(lo_l, float(np.min(prof["spine_l"])) - 0.5 * cfg.scan_max_width_mm)
        hi_l = min(hi_l, float(np.max(prof["spine_l"])) + 0.5 * cfg.scan_max_width_mm)
    if cfg.organs and cfg.scan_max_depth_mm is None:  # room behind the back for the patient table
        hi_p += organs.TABLE_EXTENT_MM
    origin = np.round(np.array([fov.bottom, lo_p, lo_l]), 6)
    shape = (n_s, int((hi_p - lo_p) // sp) + 1, int((hi_l - lo_l) // sp) + 1)
    if f == 1:
        return anat.Canvas(shape, origin, (sp, sp, sp)), prof
    fine = sp / f
    origin = np.round(origin - (f - 1) * fine / 2, 6)  # block centres on the case's voxel centres
    canvas = anat.Canvas(tuple(n * f for n in shape), origin, (fine, fine, fine))
    return canvas, _profiles(canvas.axis_mm(0), spine.spl, spine.pos, scan.body_k, scan.fat_mm, cfg)


def _draw_anatomy(canvas: anat.Canvas, prof: dict, spine: _Spine, fov: _FieldOfView, tissue: dict,
                  organ_rng: np.random.Generator | None, meta: dict) -> None:  # fmt: skip
    """Torso, lungs, organs, pelvis, vertebrae (caudal first: cranial parts win overlaps), discs and ribs."""
    shell_mm = max(1.5, 0.75 * float(canvas.spacing_mm[0]))
    poses, pos, size_k = spine.poses, spine.pos, spine.size_k
    trunk.draw_torso(canvas, prof, tissue)
    by_name = {p.name: p for p in poses}
    lung_top = by_name["T1"].center_mm[0] + 25.0
    lung_bottom = float(np.interp(17.3, pos, spine.spl[:, 0]))  # diaphragm near T11 (pos increases downwards)
    trunk.draw_lungs(canvas, prof, lung_top, lung_bottom, tissue)
    organ_hu = None
    if organ_rng is not None:
        organ_hu = organs.draw_organs(organ_rng, canvas, prof, spine.spl, spine.pos, size_k, tissue, meta)
        organs.draw_table(organ_rng, canvas, prof, tissue, meta)
    for side in (-1.0, 1.0):
        trunk.draw_ilium(canvas, by_name["S1"], side, tissue, shell_mm)
    if organ_rng is not None:
        organs.draw_hips(canvas, by_name["S1"], tissue, shell_mm)
    c1 = by_name["C1"]
    dens = {"dens_tip_mm": c1.center_mm + size_k * 7.0 * c1.frame[1] + 3.0 * c1.frame[0]}
    near = [fov.bottom - 90.0 <= v.center_mm[0] <= fov.top + 90.0 for v in poses]  # parts reach < 90 mm along s
    for v, ok in zip(reversed(poses), reversed(near)):
        if ok:
            anat.draw_vertebra(canvas, v, tissue, shell_mm, dens if v.name == "C2" else None)
    for upper, lower, ok in zip(poses[:-1], poses[1:], near[1:]):
        if ok and lower.name != "S2":
            anat.draw_disc(canvas, upper, lower, tissue["disc"])
    for v, ok in zip(poses, near):
        if ok and v.name.startswith("T"):
            end = {"T11": 80.0, "T12": 55.0, "T13": 50.0}.get(v.name, 160.0)
            r = size_k * float(anat.size("rib_r", v.pos))
            for side in (-1.0, 1.0):
                trunk.draw_rib(canvas, trunk.rib_polyline(v, side, end), r, tissue, shell_mm)
                if organ_hu is not None and end > 100.0:  # T1-T10 reach the front through cartilage
                    organs.draw_costal_cartilage(canvas, v, side, end, 0.9 * r, organ_hu["cartilage"])
    if organ_hu is not None:
        organs.draw_sternum(canvas, [v for v in poses if v.name.startswith("T")], tissue, shell_mm)


def _add_metal(rng, canvas: anat.Canvas, cfg: PhantomConfig, spine: _Spine, fov: _FieldOfView, prof: dict,
               meta: dict) -> None:  # fmt: skip
    """Pedicle screws and rods over a few thoracolumbar levels inside the scan, with streak artifacts."""
    s, pos = spine.spl[:, 0], spine.pos
    m = rng.random(4)
    inside = [i for i in range(len(spine.names)) if fov.bottom <= s[i] <= fov.top]
    candidates = [i for i in inside if 9.0 <= pos[i] <= 24.0]
    metal = {"applied": bool(m[0] < cfg.metal_rate and len(candidates) >= 2)}
    if metal["applied"]:
        k_lo, k_hi = cfg.metal_levels
        n_lv = min(len(candidates), k_lo + int(m[1] * (k_hi - k_lo + 1)))
        start = int(m[2] * (len(candidates) - n_lv + 1))
        levels = [spine.poses[i] for i in candidates[start : start + n_lv]]
        metal_hu = cfg.metal_hu[0] + m[3] * (cfg.metal_hu[1] - cfg.metal_hu[0])
        art.add_metal(canvas, levels, metal_hu, screw_r_mm=3.0, rod_r_mm=2.8)
        streak = rng.random(6)
        angles = 180.0 * streak[:5]
        amp = 150.0 + 350.0 * streak[5]
        sp = float(cfg.spacing_mm)
        n_sl = art.add_streaks(canvas, METAL_THRESHOLD_HU, amp, angles, max(3.0, 1.2 * sp), prof["spine_l"])
        metal.update(levels=[v.name for v in levels], hu=round(float(metal_hu), 3),
                     streak_amplitude_hu=round(float(amp), 3), streak_slices=n_sl)
    meta["metal"] = metal

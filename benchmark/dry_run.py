"""``spinebench run --dry-run``: every check a run makes before training, and what it would do, writing nothing.

The report: the experiment and its output folder, the data (source, spacing, cases per split), the cells (which
train, which are evaluated on another cell's training), the processes and threads, and memory estimates. The
memory figures are bounds of what can be computed without running: the preprocessed data (float32 at the
run's spacing; phantom cases from the generator's measured extent, files from their headers) and each
training's model state (weights, gradients and Adam's two moments). Activations depend on batch and crop
size and are not included; a finished run's efficiency table reports the measured peaks.
"""

from __future__ import annotations

from pathlib import Path

from spinebench.benchmark.builders import build_method
from spinebench.benchmark.config import ExperimentConfig
from spinebench.benchmark.runner import check_out_dir, checked_case_ids, checked_test_set_ids
from spinebench.benchmark.schedule import plan_units, process_count
from spinebench.benchmark.threads import choose_threads
from spinebench.benchmark.tracking import check_reachable, default_tracking_uri
from spinebench.datamodules.resources import available_memory, human

MODEL_STATE_COPIES = 4  # weights, gradients, Adam's first and second moments (float32 each)


def dry_run_report(cfg: ExperimentConfig, out_dir: Path, resume: bool = False, tracking_uri: str | None = None
                   ) -> str:
    """Validate ``cfg`` as ``spinebench run`` would (raising the same errors) and describe the run."""
    ids = checked_case_ids(cfg)  # the data source, its splits and the sizes it would generate
    test_set_ids = checked_test_set_ids(cfg)
    check_out_dir(cfg, Path(out_dir), resume)
    uri = tracking_uri or cfg.tracking.tracking_uri or default_tracking_uri()
    tracking = cfg.tracking.enabled or tracking_uri is not None  # as the runner decides
    if tracking:
        check_reachable(uri)
    units = plan_units(cfg)
    processes = process_count(cfg, len(units))
    threads = choose_threads(cfg.trainer.num_threads, processes) if cfg.trainer.accelerator in ("cpu", "auto") else None
    per_case, largest = data_bytes(cfg, ids)
    lines = [
        f"dry run of {cfg.name!r} (config hash {cfg.config_hash()[:12]}): everything is valid; nothing was written",
        f"output: {out_dir}",
        f"data: {cfg.data.source} at {cfg.data.spacing_mm:g} mm, "
        + ", ".join(f"{len(v)} {k}" for k, v in ids.items()) + " cases",
        *(f"test set {t.name}: {t.data.source}, {len(test_set_ids[t.name])} test cases" for t in cfg.test_sets),
        f"cells: {len(cfg.cells())} in {len(units)} trainings, {processes} process{'es' if processes > 1 else ''}"
        + (f" of {threads} torch thread{'s' if threads > 1 else ''} each" if threads else "")
        + f", on {cfg.trainer.accelerator} (devices {cfg.trainer.devices}, precision {cfg.trainer.precision})",
        f"tracking: MLflow {uri}, experiment {cfg.tracking.experiment or cfg.name!r}" if tracking else "tracking: off",
    ]
    states = []
    for unit in units:
        method = build_method(cfg, unit.trainer)
        params = sum(p.numel() for p in method.parameters())
        states.append(params * 4 * MODEL_STATE_COPIES)
        trainer = cfg.trainer_for(unit.trainer)
        budget = f"{trainer.max_steps} steps" if trainer.max_steps > 0 else f"{trainer.max_epochs} epochs"
        for member in unit.members:
            tested = "final" if trainer.test_checkpoint == "last" else "best-validation"
            how = (f"trains ({budget}, {params / 1e6:.2f} M parameters; tested with its {tested} weights)"
                   if member is unit.trainer
                   else f"evaluated on the training of {unit.trainer.name}")
            lines.append(f"  {member.name} seed {unit.seed}: {how}")
    n_cases = sum(len(v) for v in ids.values())
    lines.append(
        f"memory (estimates, activations not included): preprocessed data up to {human(largest)} for the largest "
        f"case, {human(per_case * n_cases)} for all {n_cases}; model state up to {human(max(states))} per training "
        f"({MODEL_STATE_COPIES} float32 copies of the weights); this machine has {human(available_memory())} available"
    )
    return "\n".join(lines)


def data_bytes(cfg: ExperimentConfig, ids: dict[str, list[str]]) -> tuple[float, float]:
    """(mean, largest) bytes of one preprocessed case (float32 at ``data.spacing_mm``), from what the source knows
    without reading voxels (image headers; the phantom generator's extent)."""
    source = cfg.data.data_source()
    sizes = [v for v in (source.estimated_voxels(r) for r in source.listing().records) if v is not None]
    if not sizes:
        return 0.0, 0.0
    return 4.0 * sum(sizes) / len(sizes), 4.0 * max(sizes)

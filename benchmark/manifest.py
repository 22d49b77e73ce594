"""The run manifest: what is needed to tell whether two runs are comparable, and to reproduce one.

Package versions, git revision, config hash, case ids per split (and their hash), seeds and the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from spinebench.datamodules.atomic import write_text_atomic

PACKAGES = (
    "spinebench", "torch", "lightning", "torchmetrics", "numpy", "scipy", "scikit-learn", "SimpleITK",
    "mlflow", "optuna", "optuna-integration", "matplotlib", "PyYAML", "rich",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout of an editable install; site-packages/spinebench else


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the source tree, or ``{"commit": None}`` when it is not the root of a git checkout
    (an installed wheel: never the commit of some repository that happens to hold the environment)."""
    if not (Path(repo) / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def machine() -> dict[str, Any]:
    import torch

    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_gib": mem_gib,
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "executable": sys.executable,
    }


def case_ids_hash(case_ids: Mapping[str, Sequence[str]]) -> str:
    canonical = json.dumps({k: list(v) for k, v in sorted(case_ids.items())}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_manifest(cfg, case_ids: Mapping[str, Sequence[str]], *, command: Sequence[str] | None = None,
                   test_sets: Mapping[str, Sequence[str]] | None = None) -> dict:
    """``cfg``: the resolved ``ExperimentConfig``; ``case_ids``: split name -> case ids in loader order;
    ``test_sets``: further test set name -> its test case ids (only written when there are any)."""
    out = {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": list(command if command is not None else sys.argv),
        "experiment": cfg.name,
        "config_hash": cfg.config_hash(),
        "seeds": list(cfg.seeds),
        "methods": [m.name for m in cfg.methods],
        "case_ids": {k: list(v) for k, v in case_ids.items()},
        "case_ids_hash": case_ids_hash(case_ids),
        "packages": package_versions(),
        "git": git_revision(),
        "machine": machine(),
    }
    if test_sets:
        out["test_sets"] = {k: list(v) for k, v in test_sets.items()}
    return out


def write_manifest(path: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")

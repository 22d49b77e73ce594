"""Plugins as a user ships them: a README example ``pip install``-ed for real into a private ``--target`` folder
(not the shared venv: pip writes the module and its ``*.dist-info/entry_points.txt`` there)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_example(heading: str, max_lines: int = 45) -> str:
    """The first ``python`` block of the README section ``heading``."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)
    assert len(code.splitlines()) < max_lines
    return code


def pip_install_plugin(tmp_path: Path, module: str, code: str, group: str) -> dict[str, str]:
    """Install ``code`` as module ``module`` with an entry point in ``group``; returns the environment under which
    a fresh Python process sees it (and this checkout)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{module}.py").write_text(code)
    dist = module.replace("_", "-")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{dist}"\nversion = "0.1"\n'
        f'[project.entry-points."{group}"]\n{module} = "{module}"\n'
        f'[tool.setuptools]\npy-modules = ["{module}"]\n'
    )
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    assert (site / f"{module}-0.1.dist-info" / "entry_points.txt").is_file()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}

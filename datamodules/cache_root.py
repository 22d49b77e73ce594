"""Where spinebench keeps what it can rebuild (preprocessed cases, the migrated MLflow store template).

``SPINEBENCH_CACHE`` when set; else the XDG cache folder (``$XDG_CACHE_HOME/spinebench``, by default
``~/.cache/spinebench``), as other tools of the field keep theirs.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("SPINEBENCH_CACHE"):
        return Path(os.environ["SPINEBENCH_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spinebench"

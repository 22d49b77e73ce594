"""The shipped experiment configs (YAML package data), found by name with ``importlib.resources``.

``spinebench run --config NAME`` reads ``NAME.yaml`` from here; ``shipped_names()`` lists them without importing
anything heavy (the CLI's ``--help`` shows them).
"""

from __future__ import annotations

import importlib.resources


def shipped_names() -> list[str]:
    """Names of the YAML configs installed with the package (``default``, ``smoke``, ``tune_di2in``...)."""
    folder = importlib.resources.files(__name__)
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))

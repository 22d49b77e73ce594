"""spinebench: vertebra localization and identification benchmarks for 3D spine CT.

One installed namespace over the repository's top-level folders (``pyproject.toml`` maps them):
``spinebench.benchmark`` (CLI, orchestration, metrics, tracking), ``spinebench.methods`` (the method plugins and
their registry), ``spinebench.datamodules`` (data sources, preprocessing, the datamodule), ``spinebench.leaderboard``
(tables and plots without torch) and ``spinebench.configs`` (the shipped YAML configs, package data).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spinebench")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

"""The shipped experiment configs (YAML package data), found by name with ``importlib.resources``.

``spinebench run --config NAME`` reads ``NAME.yaml`` from here; ``benchmark.config_files.shipped_config_names()`` lists
them. This file only makes the folder the ``spinebench.configs`` package.
"""

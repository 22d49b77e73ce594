"""The installed namespace: every folder of the repository's packages is in ``pyproject.toml``, the shipped
configs are package data, and imports run the way the design notes say (checked on the source, so a
function-level import cannot hide a wrong direction)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from spinebench.configs import shipped_names

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
# What each of our packages may import of ours (design notes, "Direction of imports"). The leaderboard reads
# the label schema and shares the torch-free file helpers (atomic writes, resource checks) with the datamodules.
ALLOWED = {
    "benchmark": {"benchmark", "methods", "datamodules", "leaderboard", "configs", ""},
    "methods": {"methods", "datamodules", ""},
    "datamodules": {"datamodules", ""},
    "leaderboard": {"leaderboard", "datamodules.labels", "datamodules.atomic", "datamodules.resources", ""},
}
PACKAGES = ("benchmark", "methods", "datamodules", "leaderboard", "configs")


def _folder_packages() -> set[str]:
    found = set()
    for name, folder in PACKAGE_DIR.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_folder_is_installed():
    """A new subfolder with an ``__init__.py`` that is not listed would be missing from the wheel."""
    assert set(SETUPTOOLS["packages"]) == _folder_packages()


def test_shipped_configs_are_package_data():
    assert shipped_names() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert "default" in shipped_names() and "smoke" in shipped_names()
    assert SETUPTOOLS["package-data"]["spinebench.configs"] == ["*.yaml"]


def _our_imports(path: Path) -> list[tuple[int, str]]:
    """(line, package of ours) for every import of ``spinebench.*`` in the file, at any depth: the subpackage
    (``methods``), or ``datamodules.<module>`` for the datamodules' modules, or "" for the root package."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = ([f"spinebench.{a.name}" for a in node.names] if node.module == "spinebench" else [node.module])
        for name in names:
            parts = name.split(".")
            if parts[0] == "spinebench":
                package = parts[1] if len(parts) > 1 and parts[1] in PACKAGES else ""
                if package == "datamodules" and len(parts) > 2:
                    package = f"datamodules.{parts[2]}"
                out.append((node.lineno, package))
            assert parts[0] not in PACKAGES, f"{path}:{node.lineno}: import {name} (use spinebench.{name})"
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    wrong = [f"{path.relative_to(REPO)}:{line}: imports spinebench.{target}"
             for path in files for line, target in _our_imports(path)
             if target not in ALLOWED[package] and target.partition(".")[0] not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


def test_tests_and_scripts_use_the_installed_names():
    for folder in ("tests", "perf", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            _our_imports(path)  # asserts that no file imports a bare top-level folder name


def _module_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (at module level or inside functions)."""
    modules: dict[str, Path] = {}
    for name, folder in PACKAGE_DIR.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            modules[".".join((name, *rel)).removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def test_no_import_circles():
    """No two modules of ours import each other, directly or around a longer loop, even inside functions: a
    circle held together by a function-level import is still one module that cannot be read without the other.
    (Packages' ``__init__`` re-exports are not loops: a package importing its own modules is how it exports.)"""
    graph = _module_graph()
    for module in graph:  # an __init__ does not make its package's modules import each other
        graph[module] = {t for t in graph[module] if not module.startswith(f"{t}.")}
    loops, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                loops.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not loops, "\n".join(loops)


def test_function_level_imports_of_ours_only_in_command_modules():
    """Modules import each other at the top. The one exception is a CLI command module: every ``spinebench`` call
    builds all the command parsers, so a command's ``run`` imports the heavy modules (torch, Lightning, MLflow)
    it needs only when it runs, which keeps ``spinebench --help`` under a second."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel.parts[:2] == ("benchmark", "commands"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found += [f"{rel}:{sub.lineno}: {sub.module}" for sub in ast.walk(node)
                              if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("spinebench")]
    assert not found, "\n".join(found)

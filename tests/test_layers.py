"""The layering rule of docs/ARCHITECTURE.md: framework/ (the package ``hgbench``) is a library that
imports downward only — never plugins/ (``hgbench.plugins``) or benchmarks/ (``hgbench.benchmarks``) —
and its modules import each other without a cycle; plugins/ never imports benchmarks/. Every import
counts: those inside functions and ``if TYPE_CHECKING`` blocks, and imports by a module name in a
string (``importlib.import_module("hgbench.benchmarks." + x)``, ``__import__``). Every plugin file is
an entry point, so none is silently unregistered (and so silently untested)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from helpers import dotted

ROOT = Path(__file__).resolve().parent.parent
# folder -> the package it is installed as (pyproject.toml's [tool.setuptools.package-dir])
PACKAGE_DIR = {"framework": "hgbench", "plugins": "hgbench.plugins", "benchmarks": "hgbench.benchmarks", "conf": "hgbench.conf",
               # hgbench's SLURM launcher, in the package Hydra takes launchers from
               "hydra_plugins/hgbench_submitit_slurm": "hydra_plugins.hgbench_submitit_slurm"}
# calls that import the module named by their first argument
DYNAMIC = {"importlib.import_module", "import_module", "__import__", "importlib.__import__",
           "importlib.util.find_spec", "find_spec", "pkgutil.resolve_name", "resolve_name"}



def leading_text(node: ast.AST) -> str | None:
    """The constant text a string expression starts with: "a.b" for "a.b", "a." + x,
    f"a.{x}" and "a.{}".format(x); None when it starts with something unknown."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return leading_text(node.left)
    if isinstance(node, ast.JoinedStr) and node.values:
        return leading_text(node.values[0])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return leading_text(node.func.value) if node.func.attr == "format" else None
    return None


def imports_of(path: Path, known: set[str] = frozenset()) -> set[str]:
    """Every absolute module name a file imports, statically or by a name in a string."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from hgbench import registry` imports the module hgbench.registry
            found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: use absolute imports (found a relative one)")
        elif isinstance(node, ast.Call) and dotted(node.func) in DYNAMIC and node.args:
            text = leading_text(node.args[0])
            if text:
                found.add(text.rstrip(".").split(":")[0])
    return found


def modules_in(folder: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT / folder).with_suffix("").parts
        out[".".join((PACKAGE_DIR[folder], *parts)).removesuffix(".__init__")] = path
    return out


def imports_by_module(folder: str) -> dict[str, set[str]]:
    modules = modules_in(folder)
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def reaches(imported: str, package: str) -> bool:
    return imported == package or imported.startswith(package + ".")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(edges):
        if u not in state:
            visit(u)
    return found


def upward(folder: str, forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    return sorted((mod, imp) for mod, imps in imports_by_module(folder).items() for imp in imps
                  if any(reaches(imp, f) for f in forbidden) or imp.split(".")[0] in ("framework", "plugins", "benchmarks", "conf"))


def test_framework_never_imports_plugins_or_benchmarks():
    assert upward("framework", ("hgbench.plugins", "hgbench.benchmarks")) == []


def test_plugins_never_import_benchmarks():
    assert upward("plugins", ("hgbench.benchmarks",)) == []


def test_framework_modules_import_each_other_without_a_cycle():
    imports = imports_by_module("framework")
    edges = {mod: {i for i in imps if i in imports and i != mod} for mod, imps in imports.items()}
    assert cycles(edges) == []


def test_the_checks_see_what_they_look_for(tmp_path):
    """The checks above would fail on each shape they forbid."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    imports = imports_by_module("framework")
    assert "hgbench.registry" in imports["hgbench.config"]  # `from hgbench import registry` is seen
    assert "hgbench.hookspecs" in imports["hgbench.registry"]
    bad = tmp_path / "bad.py"
    for line in ('importlib.import_module("hgbench.benchmarks." + x)', 'import_module(f"hgbench.benchmarks.{x}")',
                 '__import__("hgbench.plugins.model.mlp")', 'importlib.import_module("hgbench.benchmarks.{}".format(x))',
                 "from hgbench.benchmarks import common", "import hgbench.plugins.dataset.ptb",
                 "def f():\n    from hgbench.plugins.model import lstm"):
        bad.write_text(f"import importlib\nfrom importlib import import_module\n{line}\n")
        found = imports_of(bad)
        assert any(reaches(i, "hgbench.plugins") or reaches(i, "hgbench.benchmarks") for i in found), (line, found)


def test_no_plugin_is_named_in_the_framework():
    """Built-in plugins are found through entry points (pyproject.toml), not by a list of module
    names in framework/ — the same way as a third-party package's."""
    text = "\n".join(p.read_text() for p in (ROOT / "framework").rglob("*.py"))
    assert '"hgbench.plugins' not in text and "'hgbench.plugins" not in text


def test_every_plugin_file_is_an_entry_point():
    """A plugin module missing from [project.entry-points.hgbench] is never registered, so no
    contract test sees it: each plugins/<kind>/<name>.py (not _private helpers) is one, and each
    entry point names an existing file."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["entry-points"]["hgbench"].values())
    files = {f"hgbench.plugins.{p.parent.name}.{p.stem}" for p in (ROOT / "plugins").glob("*/*.py") if not p.name.startswith("_")}
    assert files - declared == set(), "plugin files that are not entry points"
    assert declared - files == set(), "entry points without a plugin file"


def test_every_package_folder_is_installed():
    """pyproject.toml lists the packages explicitly (each folder maps to a name under hgbench):
    a new subfolder with an __init__.py that is not listed would be missing from the wheel."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {package: folder for folder, package in PACKAGE_DIR.items()}
    folders = {".".join((PACKAGE_DIR[top], *init.parent.relative_to(ROOT / top).parts))
               for top in PACKAGE_DIR for init in (ROOT / top).rglob("__init__.py")}
    assert folders == set(tool["packages"])

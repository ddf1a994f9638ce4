"""The layering rule of docs/ARCHITECTURE.md: framework/ is a library that imports downward only —
never plugins/ or benchmarks/ — and its modules import each other without a cycle. Every import
counts, also those inside functions and ``if TYPE_CHECKING`` blocks."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPPER_LAYERS = ("plugins", "benchmarks")


def framework_imports() -> dict[str, set[str]]:
    """framework module -> every absolute module name it imports."""
    modules = {}
    for path in sorted((ROOT / "framework").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from framework import plugins` imports the module framework.plugins
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                raise AssertionError(f"{path}: use absolute imports (found a relative one)")
        out[name] = found
    return out


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


def test_framework_never_imports_plugins_or_benchmarks():
    upward = sorted((mod, imp) for mod, imps in framework_imports().items() for imp in imps if imp.split(".")[0] in UPPER_LAYERS)
    assert upward == []


def test_framework_modules_import_each_other_without_a_cycle():
    imports = framework_imports()
    edges = {mod: {i for i in imps if i in imports and i != mod} for mod, imps in imports.items()}
    assert cycles(edges) == []


def test_the_checks_see_what_they_look_for():
    """The checks above would fail on the two shapes they forbid."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    imports = framework_imports()
    assert "framework.plugins" in imports["framework.config"]  # `from framework import plugins` is seen
    assert "framework.hookspecs" in imports["framework.plugins"]


def test_no_plugin_is_named_in_the_framework():
    """Built-in plugins are found through entry points (pyproject.toml), not by a list of module
    names in framework/ — the same way as a third-party package's."""
    text = "\n".join(p.read_text() for p in (ROOT / "framework").rglob("*.py"))
    assert '"plugins.' not in text and "'plugins." not in text

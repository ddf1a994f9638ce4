"""Where a run came from: versions, git commit, host — recorded as MLflow tags."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the checkout hgbench runs from; ("unknown", False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return "unknown", False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


@functools.lru_cache(maxsize=None)
def package_digest(package: str) -> str:
    """A short digest of the Python sources of an importable package (or module)."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None:
        return "unknown"
    h = hashlib.sha256()
    if spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            base = Path(root)
            for f in sorted(base.rglob("*.py")):
                h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes() + b"\0")
    elif spec.origin and Path(spec.origin).is_file():
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


def _imported_modules(tree, module: str, is_package: bool) -> set[str]:
    """The modules an AST's import statements may name (``from a import b``: ``a`` and ``a.b``)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".") if base else package
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@functools.lru_cache(maxsize=None)
def module_digest(module: str, within: str) -> str:
    """A short digest of the sources of ``module`` and of every module of the package ``within``
    it imports, transitively (with the ``__init__`` of each package on the way): the code one
    built-in plugin runs, so that editing a plugin changes the fingerprint of the jobs that use
    it and of no other job."""
    import ast
    import hashlib
    import importlib.util

    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(len(within.split(".")), len(parts) + 1):  # the module and its packages
            sub = ".".join(parts[:i])
            if sub in seen:
                continue
            try:
                spec = importlib.util.find_spec(sub)
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.origin or not Path(spec.origin).is_file():
                continue
            seen[sub] = Path(spec.origin)
            try:
                tree = ast.parse(seen[sub].read_bytes())
            except SyntaxError:
                continue
            for imported in _imported_modules(tree, sub, bool(spec.submodule_search_locations)):
                if imported.startswith(within + ".") and imported not in seen:
                    todo.append(imported)
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + seen[name].read_bytes() + b"\0")
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def distribution_version(package: str) -> str:
    """'name==version' of the installed distribution that provides a top-level package: found
    among the distributions declaring ``hgbench`` plugins (fast), else by a full scan."""
    from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version

    if package.split(".")[0] == __name__.split(".")[0]:  # hgbench and hgbench.plugins are hgbench's own
        try:
            return f"hgbench=={version('hgbench')}"
        except PackageNotFoundError:
            return "hgbench (not installed)"
    for ep in entry_points(group="hgbench"):
        if ep.dist is not None and ep.value.split(".")[0].split(":")[0] == package:
            return f"{ep.dist.name}=={ep.dist.version}"
    dists = packages_distributions().get(package, [])
    if not dists:
        return "unknown"
    try:
        return f"{dists[0]}=={version(dists[0])}"
    except Exception:  # noqa: BLE001
        return dists[0]


def provenance_tags() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        hg_version = version("hgbench")
    except PackageNotFoundError:
        hg_version = "unknown"
    commit, dirty = git_commit()
    return {
        "mlflow.source.git.commit": commit,
        "hgbench.git_dirty": str(dirty).lower(),
        "hgbench.version": hg_version,
        "hgbench.torch_version": torch.__version__,
        "hgbench.python_version": platform.python_version(),
        "hgbench.host": platform.node(),
        "hgbench.torch_threads": str(torch.get_num_threads()),
        "hgbench.cpu_count": str(os.cpu_count()),
    }

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

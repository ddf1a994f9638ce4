"""Where a run came from: versions, git commit, host — recorded as MLflow tags."""

from __future__ import annotations

import functools
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
    }

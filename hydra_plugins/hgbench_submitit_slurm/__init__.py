"""hgbench's SLURM launcher (``hydra/launcher=slurm`` and ``slurm_cpu``) where Hydra looks for
launcher plugins: a Hydra launcher must be a class of the ``hydra_plugins`` package. Hydra
imports this module whenever it lists its plugins (in any Hydra app of the environment), so it
imports nothing of hgbench until a grid is launched; the launcher's work is in
``hgbench.submitit_slurm``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as HydraSlurmLauncher,
)


class SlurmLauncher(HydraSlurmLauncher):
    """Hydra's submitit SLURM launcher (the same ``hydra.launcher`` settings), launching through
    ``hgbench.submitit_slurm.launch``: SLURM's refusals and lost jobs in one line each."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from hgbench.submitit_slurm import launch

        return launch(self, job_overrides, initial_job_idx)

"""What makes two runs the same configuration in a report (``hgbench-report``'s rows and its plots'
series): the plugins (``GROUP``) and every resolved parameter that differs among runs of them."""

from __future__ import annotations

import pandas as pd

GROUP = ["method", "family", "dataset", "model"]


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The resolved parameters (``params.*``) that differ among runs of one method × family ×
    dataset × model — e.g. ``hypergrad.iterations`` in a grid over i, ``hyper_steps`` between a
    long and a short run, ``hyperparam.granularity``. With GROUP they make a report row's key:
    a row is one configuration. The seed, sizes derived from the config and what only changes how
    a run is recorded or shown (hgbench.config.NOT_IN_FINGERPRINT) are left out."""
    from hgbench.config import NOT_IN_FINGERPRINT

    skip = tuple(f"params.{k}" for k in (*NOT_IN_FINGERPRINT, "hydra", "seed", "num_weights", "num_hyperparams"))
    names = tuple(f"params.{tag}.name" for tag in ("hypergrad", "hyperparam", "dataset", "model"))  # = GROUP's columns
    cols = [c for c in runs if c.startswith("params.") and not c.startswith(skip) and c not in names]
    if not cols or runs.empty:
        return []
    keyed = runs[GROUP].fillna("?").astype(str)
    varies = runs[cols].astype(str).groupby([keyed[c] for c in GROUP]).nunique(dropna=False).max()
    return [c for c in cols if varies[c] > 1]

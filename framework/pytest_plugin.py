"""hgbench's pytest plugin: fixtures for testing hgbench plugins, loaded by pytest in any
environment where hgbench is installed (the ``pytest11`` entry point in hgbench's
pyproject.toml; ``pytest -p no:hgbench`` turns it off).

- ``hgbench_register``: ``hgbench_register(my_module)`` registers a plugin module (or plugin
  classes) for the test and removes it afterwards; a module already registered through its
  installed entry point is used as it is (``hgbench.testing.registered``);
- ``hgbench_ridge``: the float64 ridge-regression experiment at its exact inner optimum whose
  hypergradient has a closed form (``hgbench.testing.ridge_experiment`` and
  ``ridge_hypergradient``).

The checks themselves are plain functions in ``hgbench.testing`` (``check_method``,
``assert_matches_exact``, …). This module imports nothing heavy at pytest start-up beyond the
``framework`` package; the kit is imported when a fixture is used.
"""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
def hgbench_register():
    """``register(plugin, name=None) -> str``: register ``plugin`` for this test (see
    ``hgbench.testing.registered``); everything registered is removed at teardown."""
    from hgbench.testing import registered

    with contextlib.ExitStack() as stack:
        yield lambda plugin, name=None: stack.enter_context(registered(plugin, name=name))


@pytest.fixture
def hgbench_ridge():
    """A fresh ridge-regression ``Experiment`` (float64, 10 features, one decay per feature, no
    bias) at its exact inner optimum; ``hgbench.testing.ridge_hypergradient(exp)`` is its
    closed-form hypergradient."""
    from hgbench.testing import ridge_experiment

    return ridge_experiment()

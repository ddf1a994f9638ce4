"""The plugin's tests, written with hgbench's plugin test kit: ``hgbench.testing`` (the checks
hgbench runs on its own built-ins) and the ``hgbench_register`` / ``hgbench_ridge`` fixtures of
hgbench's pytest plugin (loaded by pytest wherever hgbench is installed).

Run them with ``pytest`` in this folder, with the package installed (``pip install -e .``) or not.
"""

import pytest
import torch
from hgbench_example_plugin import damped_neumann

from hgbench import ConfigError, testing
from hgbench.config import build_plugin


@pytest.fixture(autouse=True)
def plugin(hgbench_register):
    """Registered for each test; when the installed entry point has registered this very module
    already, that registration is used as it is (no clash)."""
    return hgbench_register(damped_neumann)


def test_it_is_selectable_with_its_defaults_and_checks_its_values():
    testing.check_registration("hypergrad", "damped_neumann")  # hypergrad=damped_neumann composes and builds
    assert build_plugin("hypergrad", {"name": "damped_neumann", "damping": 0.1}).damping == 0.1
    with pytest.raises(ConfigError, match="hypergrad 'damped_neumann': damping must be >= 0, got -1"):
        build_plugin("hypergrad", {"name": "damped_neumann", "damping": -1})


def test_it_meets_the_contract_of_every_method():
    testing.check_method("damped_neumann")  # finite, shaped like λ, float32 and float64, CUDA if present


def test_without_damping_it_converges_to_the_exact_hypergradient():
    testing.assert_matches_exact("damped_neumann", rtol=1e-8, damping=0.0, iterations=300, alpha=0.2)


def test_with_damping_it_converges_to_exact_on_the_damped_hessian(hgbench_ridge):
    exp = hgbench_ridge  # float64 ridge regression at its optimum
    damped = exp.hypergradient("damped_neumann", damping=0.1, iterations=300, alpha=0.2)  # a dict shaped like λ
    reference = exp.hypergradient("exact", damping=0.1)
    torch.testing.assert_close(damped, reference, rtol=1e-8, atol=1e-12)
    assert not torch.allclose(damped["log_decay"], testing.ridge_hypergradient(exp), rtol=1e-3)

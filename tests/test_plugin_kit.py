"""The plugin test kit (framework/testing.py) and hgbench's pytest plugin (framework/pytest_plugin.py):
registering a plugin for a test without clashing with its installed entry point, each kind's
contract check failing on what it is meant to catch, and the method-against-closed-form check."""

import ast
import dataclasses
import importlib.metadata
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from hgbench import (
    Dataset,
    DataSplits,
    HypergradientMethod,
    HyperparamFamily,
    Model,
    Split,
    hookimpl,
    registry,
    testing,
)

ROOT = Path(__file__).resolve().parent.parent


def plugin_module(*classes, name="kit_test_plugin"):
    """A plugin module, as an entry point would load it, registering ``classes``."""
    mod = types.ModuleType(name, "A test plugin module.")
    for kind, hook in registry.KINDS.items():
        mine = [c for c in classes if c.kind == kind]
        if mine:
            setattr(mod, hook, hookimpl(lambda mine=mine: list(mine)))
    return mod


@dataclasses.dataclass
class Halved(HypergradientMethod):
    """Half the IFT hypergradient with H⁻¹ ≈ I."""

    name = "kit_halved"
    scale: float = 0.5

    def compute(self, problem):
        return self.scale * registry.get("hypergrad", "identity")().compute(problem)


# --- registered() ------------------------------------------------------------------------------


def test_registered_adds_a_module_for_the_block_only():
    mod = plugin_module(Halved)
    with testing.registered(mod) as name:
        assert name == "kit_test_plugin" and registry.get("hypergrad", "kit_halved") is Halved
        testing.check_registration("hypergrad", "kit_halved")  # composes from its dataclass defaults, builds
    assert "kit_halved" not in registry.available("hypergrad")


def test_registered_takes_plugin_classes_directly():
    with testing.registered(Halved):
        assert registry.registry()["hypergrad"]["kit_halved"].cls is Halved
    assert "kit_halved" not in registry.available("hypergrad")


def test_a_module_already_registered_by_its_entry_point_is_used_as_is():
    """The bug of the old recipe: once the package is installed, its module is registered under
    the entry point's name, and registry.register(module, name=...) refuses it."""
    mod = plugin_module(Halved)
    registry.register(mod, name="kit_entry_point")  # what loading the installed entry point does
    try:
        with pytest.raises(ValueError, match="already registered"):
            registry.register(mod, name="my_plugin")
        with testing.registered(mod, name="my_plugin") as name:
            assert name == "kit_entry_point" and registry.get("hypergrad", "kit_halved") is Halved
        assert registry.get("hypergrad", "kit_halved") is Halved  # still the installed one's
    finally:
        registry.unregister("kit_entry_point")


def test_clashes_are_refused_clearly_and_leave_nothing_registered():
    taken = pytest.raises(ValueError, match=r"another plugin is registered as 'hgbench\.plugins\.hypergrad\.neumann'")
    with taken, testing.registered(plugin_module(Halved), name="hgbench.plugins.hypergrad.neumann"):
        pass

    @dataclasses.dataclass
    class Impostor(Halved):
        name = "neumann"

    clash = pytest.raises(ValueError, match="did not register cleanly: .*hypergrad 'neumann' is already registered by hgbench.plugins.hypergrad.neumann")
    with clash, testing.registered(plugin_module(Impostor)):
        pass
    def register_hypergradient():  # a typo: the hook is register_hypergradients
        return []

    typo = types.ModuleType("kit_typo")
    typo.register_hypergradient = hookimpl(register_hypergradient)
    with pytest.raises(ValueError, match="unknown hook 'register_hypergradient'"), testing.registered(typo):
        pass
    assert not {"kit_test_plugin", "kit_typo"} & {n for n, _ in registry.plugin_manager().list_name_plugin()}
    assert registry.get("hypergrad", "neumann").__module__ == "hgbench.plugins.hypergrad.neumann" and registry.failures() == []


# --- check_method --------------------------------------------------------------------------------


def bad_method(compute, skip=None):
    """A method class whose compute (and skip) are the given functions."""
    cls = dataclasses.make_dataclass("Bad", [], bases=(HypergradientMethod,), namespace={
        "name": "kit_bad", "__doc__": "A broken method.", "compute": compute, **({"skip": skip} if skip else {})})
    cls.__module__ = __name__
    return cls


@pytest.mark.parametrize("compute,message", [
    (lambda self, p: torch.zeros_like(p.w), r"shape \(11,\); λ is \(2,\) \(w is \(11,\)\)"),
    (lambda self, p: torch.zeros(p.lam.shape), r"on cpu float64, compute\(\) returned a torch.float32 tensor"),
    (lambda self, p: torch.full_like(p.lam, float("nan")), "non-finite values"),
    (lambda self, p: p.lam.mul_(2), r"changed w or λ in place"),
    (lambda self, p: p.lam.tolist(), "a list, not a Tensor"),
    (lambda self, p: 1 / 0, r"compute\(\) raised on cpu float32: ZeroDivisionError"),
])
def test_check_method_catches_a_broken_method(compute, message):
    with pytest.raises(AssertionError, match=r"hypergrad 'kit_bad': .*" + message):
        testing.check_method(bad_method(compute))


def test_check_method_reports_skips_and_skips_the_test_when_nothing_ran():
    half = bad_method(lambda self, p: torch.zeros_like(p.lam), skip=lambda self, p: "no float32" if p.dtype == torch.float32 else None)
    result = testing.check_method(half)
    assert result.passed == ["cpu float64"] and result.skipped == {"cpu float32": "no float32"}
    never = bad_method(lambda self, p: 1 / 0, skip=lambda self, p: "cannot run here")
    with pytest.raises(pytest.skip.Exception, match="kit_bad' on cpu float32: cannot run here"):
        testing.check_method(never)


def test_check_method_runs_on_a_problem_of_your_own():
    made = []

    def experiment(device, dtype):
        made.append((device, dtype))
        return testing.ridge_experiment(num_features=4, dtype=dtype, device=device)

    assert testing.check_method("exact", dtypes=[torch.float64], on=["cpu"], experiment=experiment).passed == ["cpu float64"]
    assert made == [("cpu", torch.float64)]


def test_check_class_wants_a_dataclass_with_defaults_of_their_types():
    class NotADataclass(Halved):
        damping: float = 0.1

    with pytest.raises(AssertionError, match=r"decorate it with @dataclass: .*\['damping'\]"):
        testing.check_method(NotADataclass)

    @dataclasses.dataclass
    class WrongDefault(Halved):
        alpha: float = None  # should be float | None

    with pytest.raises(AssertionError, match=r"default .* does not match its declared type: hypergrad.alpha=None: 'kit_halved' expects float"):
        testing.check_method(WrongDefault)


# --- assert_matches_exact ------------------------------------------------------------------------


def test_exact_and_converged_iterative_methods_match_the_closed_form():
    assert testing.assert_matches_exact("exact", rtol=1e-12) < 1e-12
    assert testing.assert_matches_exact("cg", rtol=1e-10, iterations=30) < 1e-10
    assert testing.assert_matches_exact("neumann", rtol=1e-8, iterations=300, alpha=0.2) < 1e-8


def test_a_method_off_the_closed_form_fails_with_its_relative_error():
    with pytest.raises(AssertionError, match=r"hypergrad 'identity': relative error 8\.\d+e-01 > rtol=1e-06 .*cosine 0\.9"):
        testing.assert_matches_exact("identity")
    with pytest.raises(AssertionError, match=r"hypergrad 'neumann' \{'iterations': 2\}: relative error .*"
                                             r"its cost parameter 'iterations' = 2: a larger one may converge"):
        testing.assert_matches_exact("neumann", iterations=2)
    with pytest.raises(AssertionError, match="closed-form"):
        testing.assert_matches_exact(Halved)  # a class: built with its defaults (and params)


# --- check_family, check_dataset, check_model ------------------------------------------------------


@dataclasses.dataclass
class Decay(HyperparamFamily):
    """One global decay, λ = its log."""

    name = "kit_decay"
    mismatch: float = 0.0  # added to L_T but not to penalty(): breaks the GGN split
    lam_in_loss: bool = True

    def init_hyperparams(self, ctx):
        return {"log_decay": torch.zeros(1)}

    def training_loss(self, w, lam, batch, ctx):
        return ctx.data_loss(ctx.forward(w, batch.x), batch.y) + self.penalty(w, lam, ctx) + self.mismatch

    def penalty(self, w, lam, ctx):
        return 0.5 * (lam["log_decay"].exp().squeeze() if self.lam_in_loss else 1.0) * (w * w).sum() * 1e-3

    def metrics(self, lam):
        return {"decay": lam["log_decay"].exp().item()}


def test_check_family_passes_a_good_family_and_catches_a_wrong_penalty_or_a_detached_lambda():
    assert testing.check_family(Decay).passed == ["cpu float64 digits+mlp"]
    with pytest.raises(AssertionError, match=r"training_loss .* != task loss \+ penalty\(\)"):
        testing.check_family(Decay, mismatch=0.1)
    with pytest.raises(AssertionError, match="λ never meets w in the training loss"):
        testing.check_family(Decay, lam_in_loss=False)


@dataclasses.dataclass
class Blobs(Dataset):
    """Two Gaussian blobs."""

    name = "kit_blobs"
    global_rng: bool = False
    label_shift: int = 0
    ragged: bool = False

    def load(self):
        g = None if self.global_rng else torch.Generator().manual_seed(0)
        x = torch.randn(30, 4, generator=g)
        y = (x[:, 0] > 0).long() + self.label_shift
        test_x = x[20:, :3] if self.ragged else x[20:]
        return DataSplits(Split(x[:10], y[:10]), Split(x[10:20], y[10:20]), Split(test_x, y[20:]), "classification", 2)


@pytest.mark.parametrize("params,message", [
    ({}, None),
    ({"global_rng": True}, "load\\(\\) changed torch's global RNG"),
    ({"label_shift": 1}, r"targets span \[\d, 2\], outside \[0, num_outputs=2\)"),
    ({"ragged": True}, r"test inputs are \(3,\); input_shape is \(4,\)"),
])
def test_check_dataset(params, message):
    if message is None:
        assert testing.check_dataset(Blobs).passed == ["classification, 2 outputs, input (4,)"]
    else:
        with pytest.raises(AssertionError, match=message):
            testing.check_dataset(Blobs, **params)


@dataclasses.dataclass
class Affine(Model):
    """A linear map, possibly wrong."""

    name = "kit_affine"
    extra_output: bool = False
    unseeded: bool = False

    def build(self, input_shape, num_outputs):
        layer = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_outputs + self.extra_output))
        if self.unseeded:
            with torch.no_grad():
                layer[1].weight.copy_(torch.randn(layer[1].weight.shape, generator=torch.Generator().manual_seed(id(layer))))
        return layer


@pytest.mark.parametrize("params,message", [
    ({}, None),
    ({"extra_output": True}, r"outputs must be \(batch=3, …, num_outputs=3\), got torch.Size\(\[3, 4\]\)"),
    ({"unseeded": True}, "two builds under the same torch seed give different weights"),
])
def test_check_model(params, message):
    if message is None:
        assert testing.check_model(Affine).passed == ["input (1, 8, 8) -> 3 outputs"]
    else:
        with pytest.raises(AssertionError, match=message):
            testing.check_model(Affine, **params)


# --- the pytest plugin ---------------------------------------------------------------------------


def test_the_pytest_plugin_is_installed_and_loaded(request):
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.value == "hgbench.pytest_plugin"]
    assert ep.name == "hgbench" and ep.dist.name == "hgbench"
    assert request.config.pluginmanager.has_plugin("hgbench")


def test_hgbench_register_fixture_removes_what_it_registered(hgbench_register):
    assert hgbench_register(plugin_module(Halved)) == "kit_test_plugin"
    assert hgbench_register(Halved, name="kit_again") == "kit_again"  # nested: both inside the test
    assert registry.get("hypergrad", "kit_halved") is Halved
    # teardown unregisters both: test_registered_adds_a_module_for_the_block_only re-registers the name


def test_hgbench_ridge_fixture_is_at_its_optimum_with_a_closed_form(hgbench_ridge):
    exp = hgbench_ridge
    batch = exp.problem.full_batch("train")
    w = exp.w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(exp.problem.train_loss(w, exp.lam.detach(), batch), w)
    assert g.norm() < 1e-12
    torch.testing.assert_close(exp.hypergradient("exact")["log_decay"], testing.ridge_hypergradient(exp), rtol=1e-10, atol=1e-14)


def test_kit_modules_import_nothing_heavy_at_import_time():
    """hgbench.testing must import without pytest, hgbench.pytest_plugin (loaded at every
    pytest start-up where hgbench is installed) without torch, Hydra or MLflow of its own."""
    def top_level_imports(path):
        out = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                out.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module.split(".")[0])
        return out

    assert "pytest" not in top_level_imports(ROOT / "framework" / "testing.py")
    assert top_level_imports(ROOT / "framework" / "pytest_plugin.py") <= {"__future__", "contextlib", "pytest"}

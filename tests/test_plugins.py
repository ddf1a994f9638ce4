"""Contract tests over every registered plugin, and the registry's behaviour."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from hgbench import UnknownPluginError, hookimpl, hookspecs, registry, testing
from hgbench.config import build_plugin

CONF = Path(__file__).resolve().parent.parent / "conf"
ALL = [(kind, name) for kind in registry.KINDS for name in registry.available(kind)]


def test_builtins_are_registered_and_nothing_failed():
    assert {"neumann", "cg", "identity", "exact", "unroll"} <= set(registry.available("hypergrad"))
    assert {"weight_decay", "weight_decay_per_param"} <= set(registry.available("hyperparam"))
    assert {"synthetic_linear", "digits"} <= set(registry.available("dataset"))
    assert {"linear", "mlp"} <= set(registry.available("model"))
    assert registry.failures() == []


@pytest.mark.parametrize("kind,name", ALL)
def test_each_plugin_is_selectable_with_its_dataclass_defaults(kind, name):
    """``<kind>=<name>`` composes to the plugin's dataclass defaults (an alias: with its presets)
    — the one place a plugin's defaults are written — and builds; the class is a documented
    dataclass whose defaults match their types (hgbench.testing.check_registration)."""
    testing.check_registration(kind, name)


# --- each kind's behaviour: the same checks a third-party plugin runs (hgbench.testing) ----------


@pytest.mark.parametrize("name", registry.available("hypergrad"))
def test_every_method_meets_the_contract(name):
    """On a tiny problem: a finite tensor shaped like λ, in float32 and float64, on CUDA too when
    present; a method's skip() reason skips a case (the test, if it refuses every case)."""
    testing.check_method(name)


FAMILY_SETUPS = {}  # family -> check_family options, where the default (digits images + MLP) does not fit


@pytest.mark.parametrize("name", registry.available("hyperparam"))
def test_every_family_meets_the_contract(name):
    testing.check_family(name, **FAMILY_SETUPS.get(name, {}))


MODEL_SETUPS = {  # small instances (a model not listed: its defaults on 1×8×8 inputs)
    "mlp": {"hidden": [5]},
    "cnn": {"channels": [2, 3], "hidden": [4], "kernel_size": 3},
    "resnet": {"blocks": [1, 1], "width": 2, "input_shape": (3, 8, 8)},
    "lstm": {"embedding_dim": 4, "hidden_size": 5, "num_layers": 2, "input_shape": (6,), "num_outputs": 7,
             "x": torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(0))},
}


@pytest.mark.parametrize("name", registry.available("model"))
def test_every_model_meets_the_contract(name):
    testing.check_model(name, **MODEL_SETUPS.get(name, {}))


# loading the file-backed datasets takes seconds each: test_datasets.py checks those with their files
CHEAP_DATASETS = {"synthetic_linear": {"num_features": 6}, "digits": {"train_size": 50, "val_size": 30, "test_size": 20}}


@pytest.mark.parametrize("name", list(CHEAP_DATASETS))
def test_generated_and_bundled_datasets_meet_the_contract(name):
    testing.check_dataset(name, **CHEAP_DATASETS[name])


@pytest.mark.parametrize("kind", list(registry.KINDS))
def test_no_plugin_defaults_are_copied_into_yaml(kind):
    """A YAML per built-in plugin would be a second copy of its defaults."""
    assert list((CONF / kind).glob("*.yaml")) == []


def test_an_alias_is_the_plugin_with_its_presets():
    wd = registry.get("hyperparam", "weight_decay")
    assert registry.get("hyperparam", "weight_decay_per_param") is wd
    assert build_plugin("hyperparam", {"name": "weight_decay_per_param"}).granularity == "per_param"
    # explicit values win over an alias's presets
    assert build_plugin("hyperparam", {"name": "weight_decay_per_param", "granularity": "per_tensor"}).granularity == "per_tensor"
    assert build_plugin("hyperparam", {"name": "weight_decay"}).granularity == "global"


def test_hgbench_plugins_lists_an_alias_with_the_values_it_presets():
    """`hgbench-plugins` shows what `hyperparam=weight_decay_per_param` runs with (granularity
    per_param), not the plugin class's own defaults (global); every alias, every parameter."""
    import re

    from hgbench.plugin_list import collect, render

    aliases = [(k, n) for k, entries in registry.registry().items() for n, e in entries.items() if e.preset]
    assert aliases  # weight_decay_per_param at least
    for kind, name in aliases:
        (row,) = [r for r in collect(kind)["plugins"][kind] if r["name"] == name]
        listed = {p["name"]: p["default"] for p in row["parameters"]}
        built = build_plugin(kind, {"name": name})  # what `<kind>=<name>` runs with
        assert listed == {f.name: getattr(built, f.name) for f in dataclasses.fields(built)}, name
    data = collect("hyperparam")
    by = {r["name"]: {p["name"]: p["default"] for p in r["parameters"]} for r in data["plugins"]["hyperparam"]}
    assert by["weight_decay_per_param"]["granularity"] == "per_param" and by["weight_decay"]["granularity"] == "global"
    text = render(data)
    assert re.search(r"\n  weight_decay_per_param +granularity +'global' \| 'per_tensor' \| 'per_param' +per_param ", text), text


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownPluginError) as err:
        registry.get("hypergrad", "neuman")
    msg = str(err.value)
    assert "unknown hypergrad 'neuman'" in msg
    for name in ("cg", "exact", "identity", "neumann", "unroll"):
        assert f"  - {name}" in msg


def test_every_hookspec_is_documented():
    specs = [f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "hgbench_spec")]
    assert len(specs) >= 7
    for f in specs:
        assert f.__doc__ and len(f.__doc__.strip()) > 20, f.__name__


def test_a_runtime_plugin_is_found_by_name_and_can_be_removed():
    @dataclasses.dataclass
    class Doubled(registry.get("hypergrad", "identity")):
        name = "doubled"

    class Extra:
        @hookimpl
        def register_hypergradients(self):
            return [Doubled]

    registry.register(Extra(), name="extra")
    try:
        assert registry.get("hypergrad", "doubled") is Doubled
        assert registry.registry()["hypergrad"]["doubled"].source == "extra"
    finally:
        registry.unregister("extra")
    assert "doubled" not in registry.available("hypergrad")


def test_a_plugin_that_raises_in_its_hook_is_reported_and_the_rest_still_load():
    class Broken:
        @hookimpl
        def register_models(self):
            raise RuntimeError("boom")

    registry.register(Broken(), name="broken")
    try:
        with pytest.warns(UserWarning, match="broken.*boom"):
            models = registry.available("model")  # the registry is rebuilt, calling every hook
        assert "mlp" in models
        assert any(f.source == "broken" and "boom" in f.error for f in registry.failures())
    finally:
        registry.unregister("broken")


def test_an_unregistered_plugins_config_is_no_longer_selectable():
    """A plugin registered for a while (a test, a notebook) leaves no ``<kind>=<name>`` option
    behind in Hydra's ConfigStore once it is gone."""
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore

    from hgbench import HypergradientMethod
    from hgbench.hydra_config import register_plugin_configs
    from hgbench.testing import registered

    @dataclass
    class Passing(HypergradientMethod):
        """A temporary method."""

        name = "temporary_passing"

    with registered(Passing):
        register_plugin_configs()
        assert "temporary_passing.yaml" in ConfigStore.instance().repo["hypergrad"]
    register_plugin_configs()
    assert "temporary_passing.yaml" not in ConfigStore.instance().repo["hypergrad"]
    assert "neumann.yaml" in ConfigStore.instance().repo["hypergrad"]

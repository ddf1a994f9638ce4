"""Contract tests over every registered plugin, and the registry's behaviour."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from framework import UnknownPluginError, compose_config, hookimpl, hookspecs, plugins
from framework.base import Plugin
from framework.config import build_plugin, to_dict

CONF = Path(__file__).resolve().parent.parent / "conf"
ALL = [(kind, name) for kind in plugins.KINDS for name in plugins.available(kind)]


def test_builtins_are_registered_and_nothing_failed():
    assert {"neumann", "cg", "identity", "exact", "unroll"} <= set(plugins.available("hypergrad"))
    assert {"weight_decay", "weight_decay_per_param"} <= set(plugins.available("hyperparam"))
    assert {"synthetic_linear", "digits"} <= set(plugins.available("dataset"))
    assert {"linear", "mlp"} <= set(plugins.available("model"))
    assert plugins.failures() == []


@pytest.mark.parametrize("kind,name", ALL)
def test_each_plugin_is_selectable_with_its_dataclass_defaults(kind, name):
    """``<kind>=<name>`` composes to the plugin's dataclass defaults (an alias: with its presets)
    — the one place a plugin's defaults are written — and builds."""
    entry = plugins.entry(kind, name)
    cls = entry.cls
    assert issubclass(cls, Plugin) and cls.kind == kind
    assert cls.name == name or name in cls.aliases
    assert cls.__doc__ or inspect.getmodule(cls).__doc__, "document the plugin"
    node = to_dict(compose_config(**{kind: name})[kind])
    assert node == {"name": cls.name, **cls.defaults(), **(entry.preset or {})}
    assert isinstance(build_plugin(kind, node), cls)
    assert build_plugin(kind, node) == build_plugin(kind, {"name": name})  # the alias name builds alike


@pytest.mark.parametrize("kind", list(plugins.KINDS))
def test_no_plugin_defaults_are_copied_into_yaml(kind):
    """A YAML per built-in plugin would be a second copy of its defaults."""
    assert list((CONF / kind).glob("*.yaml")) == []


def test_an_alias_is_the_plugin_with_its_presets():
    wd = plugins.get("hyperparam", "weight_decay")
    assert plugins.get("hyperparam", "weight_decay_per_param") is wd
    assert build_plugin("hyperparam", {"name": "weight_decay_per_param"}).granularity == "per_param"
    # explicit values win over an alias's presets
    assert build_plugin("hyperparam", {"name": "weight_decay_per_param", "granularity": "per_tensor"}).granularity == "per_tensor"
    assert build_plugin("hyperparam", {"name": "weight_decay"}).granularity == "global"


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownPluginError) as err:
        plugins.get("hypergrad", "neuman")
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
    class Doubled(plugins.get("hypergrad", "identity")):
        name = "doubled"

    class Extra:
        @hookimpl
        def register_hypergradients(self):
            return [Doubled]

    plugins.register(Extra(), name="extra")
    try:
        assert plugins.get("hypergrad", "doubled") is Doubled
        assert plugins.registry()["hypergrad"]["doubled"].source == "extra"
    finally:
        plugins.unregister("extra")
    assert "doubled" not in plugins.available("hypergrad")


def test_a_plugin_that_raises_in_its_hook_is_reported_and_the_rest_still_load():
    class Broken:
        @hookimpl
        def register_models(self):
            raise RuntimeError("boom")

    with pytest.warns(UserWarning, match="broken.*boom"):
        plugins.register(Broken(), name="broken")
        try:
            assert "mlp" in plugins.available("model")
            assert any(f.source == "broken" and "boom" in f.error for f in plugins.failures())
        finally:
            plugins.unregister("broken")

"""Hydra glue: make every registered plugin selectable as ``<kind>=<name>``.

A plugin's config is its dataclass defaults (the one place they are written), stored in Hydra's
ConfigStore under the group ``<kind>`` and the plugin's name — for built-in and third-party
plugins alike, so ``hypergrad=my_method`` works as soon as a package is installed. An alias
(``Plugin.aliases``) is stored as the plugin's config with its presets applied, under the
plugin's own ``name``. A ``conf/<kind>/<name>.yaml``, where one exists, takes precedence (a
plugin package may ship one); hgbench's built-ins ship none.
"""

from __future__ import annotations

from importlib.resources import files

from hydra.core.config_store import ConfigStore

from hgbench import registry

CONFIG_MODULE = "hgbench.conf"


def has_yaml(kind: str, name: str) -> bool:
    return files(CONFIG_MODULE).joinpath(kind, f"{name}.yaml").is_file()


_stored: dict[tuple[str, str], tuple[dict, str]] = {}  # (kind, name) → (node, provider) this process put in the ConfigStore


def register_launcher() -> None:
    """hgbench's SLURM launcher (``hydra/launcher=slurm``) made known to Hydra. Hydra finds
    launchers by listing the ``hydra_plugins`` package's modules, which misses one installed
    editable (``pip install -e``: the module is found by import only); registering it by its class
    works either way (Hydra's public ``Plugins.register``; twice is once)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.hgbench_submitit_slurm import SlurmLauncher

    Plugins.instance().register(SlurmLauncher)


def register_plugin_configs() -> list[tuple[str, str]]:
    """Store configs for registered plugins that have no YAML file, and drop those of plugins
    unregistered since (a test's temporary plugin must not stay selectable); returns what was
    stored. A config already stored as it is is left alone (the same object in the store: what
    ``api.compose_config`` compares to reuse a composition). Registers hgbench's SLURM launcher too."""
    register_launcher()
    cs = ConfigStore.instance()
    stored = {}
    for kind, entries in registry.registry().items():
        for name, entry in entries.items():
            if not has_yaml(kind, name):
                node = {"name": entry.cls.name, **entry.cls.defaults(), **(entry.preset or {})}
                stored[kind, name] = (node, entry.source)
                if _stored.get((kind, name)) != (node, entry.source) or f"{name}.yaml" not in cs.repo.get(kind, {}):
                    cs.store(group=kind, name=name, node=node, provider=entry.source)
    for kind, name in set(_stored) - set(stored):
        cs.repo.get(kind, {}).pop(f"{name}.yaml", None)
    _stored.clear()
    _stored.update(stored)
    return list(stored)

"""Hydra glue: make every registered plugin selectable as ``<kind>=<name>``.

Built-in plugins ship ``conf/<kind>/<name>.yaml``. A third-party plugin may ship no YAML at all:
its dataclass defaults are stored in Hydra's ConfigStore under the same group and name, so
``hypergrad=my_method`` works as soon as the package is installed.
"""

from __future__ import annotations

from importlib.resources import files

from hydra.core.config_store import ConfigStore

from framework import plugins

CONFIG_MODULE = "conf"


def has_yaml(kind: str, name: str) -> bool:
    return files(CONFIG_MODULE).joinpath(kind, f"{name}.yaml").is_file()


def register_plugin_configs() -> list[tuple[str, str]]:
    """Store configs for registered plugins that have no YAML file; returns what was stored."""
    cs = ConfigStore.instance()
    stored = []
    for kind, entries in plugins.registry().items():
        for name, entry in entries.items():
            if not has_yaml(kind, name):
                cs.store(group=kind, name=name, node={"name": name, **entry.cls.defaults()}, provider=entry.source)
                stored.append((kind, name))
    return stored

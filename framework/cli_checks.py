"""Overrides that Hydra would reject while composing — an unknown group option
(``hypergrad=neuman``) or an unknown key (``hyper_step=100``, ``hypergrad.iteration=20``) —
found before Hydra runs, so each is one line naming the override, the closest valid name and what
is allowed (exit 2), in single runs and ``-m`` grids alike, and no ``outputs/`` folder is left.

Every value of a choice or range sweep is checked; interval sweeps (Optuna's search spaces) only
by their key. What Hydra composes but hgbench refuses (a wrong type, an unknown ``+key``) is
checked later, with the whole config (``hgbench.parts.build_parts``).
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from hgbench.hydra_config import CONFIG_MODULE, register_plugin_configs

MISSING_OPTION = re.compile(r"Could not (?:find|load) '([^']+)/([^']+)'")
UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")


def _keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _keys(v, key + ".")
    return out


def _closest(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" — did you mean {match[0]}?" if match else "."


def hydra_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line as ``hydra.main`` reads it: its overrides and flags (Hydra 1.3's, the
    version pinned in pyproject.toml). Hydra keeps its own parser private, so this is a copy of
    its options, not a use of it; raises ``SystemExit`` on what argparse refuses."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    p.add_argument("overrides", nargs="*")
    for flags in (("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",), ("--run", "-r"),
                  ("--multirun", "-m"), ("--shell-completion", "-sc")):
        p.add_argument(*flags, action="store_true")
    for flags in (("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"),
                  ("--config-dir", "-cd"), ("--experimental-rerun",)):
        p.add_argument(*flags)
    p.add_argument("--info", "-i", nargs="?", const="all")
    return p.parse_args(argv)


def check_overrides(argv: list[str]) -> str | None:
    """The one-line message for the first override of ``argv`` (the command line after
    ``hgbench``) that Hydra cannot compose; None when it composes (or is not Hydra's to refuse)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = hydra_arguments(argv)
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except BaseException:  # noqa: BLE001 - a usage or syntax error: Hydra says it itself
        return None
    if (args.help or args.hydra_help or args.version or args.info or args.shell_completion or args.config_path
            or args.config_dir or args.config_name or args.experimental_rerun):
        return None
    texts = list(args.overrides)
    variants: list[list[str]] = []  # per override: the commands to compose it as
    for o, text in zip(parsed, texts, strict=True):
        if o.is_sweep_override():
            key = text.split("=", 1)[0]
            try:
                variants.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # noqa: BLE001 - an interval sweep: its key only, at the config's value
                variants.append([])
        else:
            variants.append([text])
    first = [v[0] for v in variants if v]
    register_plugin_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        trials = [first] + [[*(x for x in first if x != v[0]), other] for v in variants for other in v[1:]]
        for overrides in trials:
            try:
                compose("config", overrides=overrides, return_hydra_config=True)
            except MissingConfigException as exc:
                m = MISSING_OPTION.search(str(exc))
                if not m:
                    return None
                group, option = m.groups()
                options = sorted(loader.get_group_options(group))
                bad = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), f"{group}={option}")
                return (f"{bad}: {group} has no option {option!r}{_closest(option, options)} "
                        f"Available: {', '.join(options) or '(none)'}")
            except ConfigCompositionException as exc:
                m = UNKNOWN_KEY.search(str(exc))
                if not m:
                    return None
                key = m.group(1)
                groups = [o for o in overrides if not o.startswith(("+", "~")) and loader.get_group_options(o.split("=", 1)[0])]
                try:
                    cfg = OmegaConf.to_container(compose("config", overrides=groups, return_hydra_config=True))
                except Exception:  # noqa: BLE001
                    return None
                keys = _keys(cfg)
                parent = key.rsplit(".", 1)[0] if "." in key else ""
                if parent:
                    siblings = sorted(k[len(parent) + 1:] for k in keys
                                      if k.startswith(parent + ".") and "." not in k[len(parent) + 1:])
                    node = cfg.get(parent) if "." not in parent else None
                    name = f" {node['name']!r}" if isinstance(node, dict) and "name" in node else ""
                    where, allowed = f"of {parent}{name}", f"Allowed in {parent}"
                else:
                    siblings = sorted(k for k in keys if "." not in k and k != "hydra")
                    where, allowed = "in the config", "Allowed"
                bad = next((o for o in overrides if o.split("=", 1)[0] == key), key)
                return f"{bad}: unknown key {key.rsplit('.', 1)[-1]!r} {where}{_closest(key, keys)} {allowed}: {', '.join(siblings)}"
    return None

"""Everything that can refuse a command before Hydra starts it (``preflight``), so a refused
command is one line (exit 2) and leaves nothing behind — no ``outputs/`` or ``multirun/`` folder,
no MLflow store — in single runs and ``-m`` grids alike:

- overrides that Hydra would reject while composing — an unknown group option
  (``hypergrad=neuman``) or an unknown key (``hyper_step=100``, ``hypergrad.iteration=20``) — each
  one line naming the override, the closest valid name and what is allowed (``check_overrides``);
- then, on the composed config of each job: for a single run the whole config built and checked
  (``hgbench.parts.build_parts``: types, ranges, each plugin's own checks); in a grid the keys and
  types of every job (a typo), while a value a job's plugin refuses is that job's, recorded as
  FAILED while the grid runs on; the dataset's files or package (``Dataset.check_available``); the
  tracking URI as a string (``hgbench.store.uri_problem``; reaching the store is the Hydra
  callbacks' ``check_store``, which runs before Hydra creates a run folder).

A ``mlflow.tracking_uri`` given on the command line is checked first, before the plugins (and
torch) are imported. Every value of a choice or range sweep — on the command line or in a sweep
preset's ``hydra.sweeper.params`` — is checked; interval sweeps (Optuna's search spaces) only by
their key.
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


# flags after which Hydra runs no job (it prints something, or runs an app of another config)
NO_JOB = ("help", "hydra_help", "version", "info", "shell_completion", "config_path", "config_dir", "config_name",
          "experimental_rerun", "cfg")
URI_KEY = "mlflow.tracking_uri"


def check_overrides(argv: list[str]) -> str | None:
    """The one-line message for the first override of ``argv`` (the command line after
    ``hgbench``) that Hydra cannot compose; None when it composes (or is not Hydra's to refuse)."""
    return _composed(argv)[0]


def preflight(argv: list[str]) -> str | None:
    """The one-line message (after ``hgbench: error: ``) refusing the command ``argv``, or None
    when it may start. Registers the plugins' configs, which every command that composes the
    config needs (``--help``, ``--info`` and ``--cfg`` included)."""
    try:
        args = hydra_arguments(argv)
        parsed = _parser().parse_overrides(args.overrides)
    except BaseException:  # noqa: BLE001 - a usage or syntax error: Hydra says it itself
        return None
    if any(getattr(args, flag) for flag in NO_JOB if flag != "cfg"):  # no job: what Hydra prints composes the config
        if not args.version:
            register_plugin_configs()
        return None
    problem = None if args.cfg else _uri_overrides_problem(parsed)
    if problem:  # before the plugins, and torch with them, are imported
        return problem
    problem, configs, multirun = _composed(argv)  # registers the plugins' configs
    if problem or not configs:
        return problem
    return check_jobs(configs, multirun)


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _uri_overrides_problem(parsed: list) -> str | None:
    """The tracking URIs given on the command line, checked as strings (``store.uri_problem``)."""
    from hgbench.store import uri_problem

    if any(o.key_or_group == "mlflow.enabled" for o in parsed):
        return None  # maybe recording nothing: the composed config says (check_jobs)
    for o in parsed:
        if o.key_or_group != URI_KEY or o.is_delete():
            continue
        try:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        except Exception:  # noqa: BLE001 - an interval: not a URI
            continue
        for value in values:
            problem = uri_problem(str(value)) if isinstance(value, str) and value else None
            if problem:
                return f"{URI_KEY}={value}: {problem}"
    return None


def _variants(parsed: list, texts: list[str]) -> list[list[str]]:
    """Per override, the overrides to compose it as: each value of a choice or range sweep; none
    for an interval sweep (its key only, at the config's value)."""
    variants: list[list[str]] = []
    for o, text in zip(parsed, texts, strict=True):
        if o.is_sweep_override():
            key = text.split("=", 1)[0]
            try:
                variants.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # noqa: BLE001 - an interval sweep
                variants.append([])
        else:
            variants.append([text])
    return variants


def _sweeper_params(cfg: Any, on_command_line: set[str]) -> list[str]:
    """A sweep preset's grid (``hydra.sweeper.params`` of Hydra's basic sweeper) as overrides,
    without the keys the command line sets itself (those win, as in the sweeper)."""
    sweeper = cfg.hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper") or not sweeper.get("params"):
        return []
    return [f"{k}={v}" for k, v in sweeper.params.items() if k not in on_command_line]


def _composed(argv: list[str]) -> tuple[str | None, list, bool]:
    """(the first override Hydra cannot compose, as one line; the composed config — with its
    ``hydra`` node — of each job to check: the first of the grid, then one per other value of each
    sweep; whether it is a grid). No configs for a command that runs no job."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    try:
        args = hydra_arguments(argv)
        parser = _parser()
        parsed = parser.parse_overrides(args.overrides)
    except BaseException:  # noqa: BLE001 - a usage or syntax error: Hydra says it itself
        return None, [], False
    if any(getattr(args, flag) for flag in NO_JOB if flag != "cfg"):
        return None, [], False
    texts = list(args.overrides)
    variants = _variants(parsed, texts)
    register_plugin_configs()
    GlobalHydra.instance().clear()
    configs: list = []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        first = [v[0] for v in variants if v]
        trials = [first] + [[*(x for x in first if x != v[0]), other] for v in variants for other in v[1:]]
        i, expanded = 0, False
        while i < len(trials):
            overrides = trials[i]
            i += 1
            try:
                configs.append(compose("config", overrides=overrides, return_hydra_config=True))
            except MissingConfigException as exc:
                return _missing_option(exc, overrides, loader), [], False
            except ConfigCompositionException as exc:
                return _unknown_key(exc, overrides, loader), [], False
            if i == 1 and not expanded:  # a sweep preset's own grid: each of its values too
                expanded = True
                preset = _sweeper_params(configs[0], {o.key_or_group for o in parsed})
                try:
                    more = _variants(parser.parse_overrides(preset), preset)
                except Exception:  # noqa: BLE001 - not ours to parse: the sweeper says
                    more = []
                if any(len(v) > 1 for v in more):
                    first = first + [v[0] for v in more if v]
                    trials = [first] + [[*(x for x in first if x != v[0]), other] for v in variants + more for other in v[1:]]
                    configs, i = [], 0
    if args.cfg is not None:
        return None, [], False
    multirun = bool(args.multirun) or str(configs[0].hydra.get("mode")).endswith("MULTIRUN")  # a sweep preset's hydra.mode
    return None, configs, multirun


def _missing_option(exc: Exception, overrides: list[str], loader: Any) -> str | None:
    m = MISSING_OPTION.search(str(exc))
    if not m:
        return None
    group, option = m.groups()
    options = sorted(loader.get_group_options(group))
    bad = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), f"{group}={option}")
    return (f"{bad}: {group} has no option {option!r}{_closest(option, options)} "
            f"Available: {', '.join(options) or '(none)'}")


def _unknown_key(exc: Exception, overrides: list[str], loader: Any) -> str | None:
    from hydra import compose

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


def job_config(cfg: Any) -> Any | None:
    """A composed config without its ``hydra`` node, resolved; None if it cannot be resolved
    outside Hydra (an interpolation of Hydra's runtime values): the job itself then checks it."""
    try:
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return OmegaConf.create(OmegaConf.to_container(job, resolve=True))
    except Exception:  # noqa: BLE001
        return None


def check_jobs(configs: list, multirun: bool) -> str | None:
    """The first reason to refuse one of the jobs ``configs`` (composed configs, ``_composed``):
    ``check_job`` for each, each dataset and tracking URI once."""
    seen: set[str] = set()
    for cfg in configs:
        job = job_config(cfg)
        if job is None:
            continue
        problem = check_job(job, multirun, seen)
        if problem:
            return problem
    return None


def check_job(job: Any, multirun: bool, seen: set[str] | None = None) -> str | None:
    """Why the job ``job`` (a resolved config without ``hydra``) must not start, or None: in a
    single run, any config error (``build_parts``); in a grid, an unknown key, plugin or wrong type
    only (a value a plugin refuses fails that job alone, recorded); then its dataset's files
    (``Dataset.check_available``) and its tracking URI as a string. ``seen``: the datasets and URIs
    already checked (skipped)."""
    import json
    import os

    from hgbench import registry
    from hgbench.config import build_plugin, to_dict
    from hgbench.errors import ConfigTypeError, HgbenchError, UnknownPluginError, describe
    from hgbench.schema import check_run_config
    from hgbench.store import resolve_tracking_uri, uri_problem

    seen = set() if seen is None else seen
    dataset = None
    try:
        check_run_config(job, ranges=not multirun)
        for kind in registry.KINDS:
            try:
                plugin = build_plugin(kind, job[kind])
            except (ConfigTypeError, UnknownPluginError):
                raise
            except HgbenchError:
                if not multirun:
                    raise
                continue  # a value this job's plugin refuses: the job fails alone, recorded
            except Exception:  # noqa: BLE001 - a bug in a plugin's own checks: the job shows its traceback and records it
                return None
            dataset = plugin if kind == "dataset" else dataset
    except HgbenchError as exc:
        return describe(exc)
    key = "dataset " + json.dumps(to_dict(job.dataset), sort_keys=True, default=str)
    if dataset is not None and key not in seen:
        seen.add(key)
        check = getattr(dataset, "check_available", None)
        try:
            if check is not None:
                check()
        except (FileNotFoundError, ModuleNotFoundError, HgbenchError) as exc:
            return describe(exc)
        except Exception:  # noqa: BLE001 - a plugin's bug: load() will show it
            pass
    if job.mlflow.enabled:
        configured = job.mlflow.tracking_uri
        uri = resolve_tracking_uri(configured)
        if "uri " + uri not in seen:
            seen.add("uri " + uri)
            problem = uri_problem(uri)
            if problem:
                where = URI_KEY if configured else "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default store"
                return f"{where}={uri}: {problem}"
    if not multirun:  # the rest of a single run's config (the optimisers, the reference method), last: it takes longest
        from hgbench.parts import build_parts

        try:
            build_parts(job)
        except HgbenchError as exc:
            return describe(exc)
        except Exception:  # noqa: BLE001 - a plugin's bug: the job shows it
            return None
    return None

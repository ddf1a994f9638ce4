"""The ``hgbench-plugins`` command: what is registered, where it came from, what it takes.

    hgbench-plugins                   # a plain-text table per kind, then the plugin modules
    hgbench-plugins --kind hypergrad  # one kind only
    hgbench-plugins --json            # the same, for machines

For every registered plugin class: its kind and name, where it came from (a built-in module, an
entry point of an installed distribution with its version, or registered at run time), and its
parameters (dataclass fields) with their types and defaults. Plugins that failed to import or to
register are listed with their error; they never stop the others from loading.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
import typing
from typing import Any

from hgbench import hookspecs, registry
from hgbench.config import type_name
from hgbench.hydra_config import has_yaml

HOOKS = [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "hgbench_spec")]  # spec order


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Entry-point name -> entry point in the ``hgbench`` group (first wins, as in plugins.py)."""
    out: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep)
    return out


def origin(source: str, entry_points: dict[str, importlib.metadata.EntryPoint] | None = None) -> dict[str, Any]:
    """Where the plugin registered as ``source`` (a plugin-manager name) came from."""
    eps = _entry_points() if entry_points is None else entry_points
    plugin = registry.plugin_manager().get_plugin(source)
    module = getattr(plugin, "__name__", None) or type(plugin).__module__
    if source in registry.builtin_names():
        return {"origin": "built-in", "module": module, "entry_point": None, "distribution": None, "version": None}
    ep = eps.get(source)
    if ep is not None and not os.environ.get("HGBENCH_DISABLE_ENTRY_POINTS"):
        dist = ep.dist
        return {
            "origin": "entry point",
            "module": ep.value,
            "entry_point": ep.name,
            "distribution": dist.name if dist is not None else None,
            "version": dist.version if dist is not None else None,
        }
    return {"origin": "run time", "module": module, "entry_point": None, "distribution": None, "version": None}


def parameters(cls: type, preset: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The plugin's dataclass fields: name, type (as config errors name it) and default — for an
    alias (``Plugin.aliases``), the value it presets."""
    hints = typing.get_type_hints(cls)
    defaults = {**cls.defaults(), **(preset or {})}
    return [
        {"name": f.name, "type": type_name(hints.get(f.name, Any)), "default": defaults[f.name]}
        for f in dataclasses.fields(cls)
    ]


def collect(kind: str | None = None) -> dict[str, Any]:
    """Everything the command shows, as plain data (what ``--json`` prints)."""
    reg = registry.registry()
    failures = registry.failures()
    eps = _entry_points()
    kinds = [kind] if kind else list(registry.KINDS)
    out: dict[str, Any] = {"plugins": {}, "modules": [], "failures": []}
    for k in kinds:
        rows = []
        for name in sorted(reg[k]):
            entry = reg[k][name]
            rows.append({
                "kind": k,
                "name": name,
                "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
                "source": entry.source,
                **origin(entry.source, eps),
                "config": f"conf/{k}/{name}.yaml" if has_yaml(k, name) else "dataclass defaults",
                "parameters": parameters(entry.cls, entry.preset),
            })
        out["plugins"][k] = rows
    if kind is None:
        pm = registry.plugin_manager()
        for name, plugin in pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            implemented = {h.name for h in pm.get_hookcallers(plugin) or []}
            out["modules"].append({"source": name, **origin(name, eps), "hooks": [h for h in HOOKS if h in implemented]})
    for f in failures:
        name = f.source.split(" (", 1)[0]  # import failures read "<entry point> (<module>)"
        ep = eps.get(name)
        dist = ep.dist if ep is not None else None
        out["failures"].append({
            "source": f.source,
            "plugin": name,
            "distribution": dist.name if dist is not None else None,
            "version": dist.version if dist is not None else None,
            "error": f.error,
        })
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)  # None -> null, True -> true, [128] -> [128]


def _from(row: dict[str, Any]) -> str:
    if row["origin"] == "built-in":
        return f"built-in: {row['module']}"
    if row["origin"] == "entry point":
        dist = f"{row['distribution']} {row['version']}" if row["distribution"] else "unknown distribution"
        return f"entry point {row['entry_point']!r} ({dist})"
    return f"registered at run time: {row['source']}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: (indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def render(data: dict[str, Any]) -> str:
    """The plain-text listing: one table per kind (a row per parameter), modules, failures."""
    lines: list[str] = []
    for kind, entries in data["plugins"].items():
        lines.append(f"{kind} ({len(entries)} registered; choose with {kind}=<name>)")
        rows = []
        for e in entries:
            params = e["parameters"] or [{"name": "-", "type": "", "default": ""}]
            for i, p in enumerate(params):
                first = i == 0
                default = _fmt(p["default"]) if p["name"] != "-" else ""
                rows.append([e["name"] if first else "", p["name"], p["type"], default, _from(e) if first else ""])
        lines += _table(["name", "parameter", "type", "default", "from"], rows) if rows else ["  (none)"]
        lines.append("")
    if data["modules"]:
        lines.append("plugin modules and the hooks they implement")
        rows = [[m["source"], ", ".join(m["hooks"]) or "-", "built-in" if m["origin"] == "built-in" else _from(m)]
                for m in data["modules"]]
        lines += _table(["plugin", "hooks", "from"], rows)
        lines.append("")
    if data["failures"]:
        lines.append(f"failed to load ({len(data['failures'])})")
        for f in data["failures"]:
            dist = f" [{f['distribution']} {f['version']}]" if f["distribution"] else ""
            lines.append(f"  {f['source']}{dist}: {f['error']}")
    else:
        lines.append("no plugin failed to load")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hgbench-plugins",
        description="List hgbench's registered plugins: name, origin, parameters (types and defaults), and failures.",
    )
    parser.add_argument("--kind", choices=list(registry.KINDS), help="only this kind of plugin")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    data = collect(args.kind)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

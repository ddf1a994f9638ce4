"""Exceptions hgbench raises on purpose; each message says what to do instead."""

from __future__ import annotations


class HgbenchError(Exception):
    """Base class of hgbench's own errors."""


class UnknownPluginError(HgbenchError, KeyError):
    """A plugin name that no registered plugin of that kind has."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, sorted(available)
        listing = "\n".join(f"  - {n}" for n in self.available) or "  (none registered)"
        super().__init__(f"unknown {kind} {name!r}. Available {kind} plugins:\n{listing}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class ConfigError(HgbenchError, ValueError):
    """A configuration value that is wrong: names the key, the value and what is allowed."""


class ConfigTypeError(ConfigError):
    """A key that does not exist or a value of the wrong type (a typo, as opposed to a value out of
    range): refused for the whole command, in grids too, before anything runs."""


class DataError(HgbenchError, ValueError):
    """A dataset's files are there but unreadable or inconsistent; names the file."""


class SkipRun(HgbenchError):
    """A combination that cannot run (e.g. an exact Hessian too large); carries the reason."""


class DivergenceError(HgbenchError, FloatingPointError):
    """A loss, weight or hypergradient became NaN/inf."""

    def __init__(self, what: str, step: int):
        self.what, self.step = what, step
        super().__init__(f"{what} is not finite at hyper-step {step}")


class StoreError(HgbenchError):
    """The MLflow store cannot be used (wrong URI, no credentials, not writable)."""


class RecordingError(HgbenchError):
    """The run's results could not be recorded (a recorder failed, the disk is full): the run is
    stopped rather than computing what nothing would keep."""


def describe(exc: BaseException) -> str:
    """An error as the console shows it: by its message, and a plugin's failure (``load()``,
    ``compute()``) with the plugin's name and the error's type."""
    plugin = getattr(exc, "hgbench_plugin", None)
    if plugin:
        return f"{plugin} raised {type(exc).__name__}: {exc}"
    return str(exc)

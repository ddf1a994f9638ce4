"""Plot set-up: figures are ``matplotlib.figure.Figure`` objects saved to files — no pyplot and no
backend switch, so a notebook user's matplotlib backend is left as it was."""

from __future__ import annotations

from typing import Any


def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any):
    """``(figure, axes)`` as ``pyplot.subplots`` returns them, on a figure no backend manages."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def cmap(name: str):
    """A registered colormap by name."""
    import matplotlib

    return matplotlib.colormaps[name]

"""Plot set-up: matplotlib's pyplot on the Agg backend (files only, no display needed)."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

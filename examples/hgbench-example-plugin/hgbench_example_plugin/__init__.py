"""An example third-party hgbench plugin package: the ``damped_neumann`` hypergradient method."""

__version__ = "0.1.0"

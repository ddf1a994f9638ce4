"""hgbench's Hydra configs (a package so that ``pkg://hgbench.conf`` finds them when installed)."""

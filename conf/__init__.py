"""hgbench's Hydra configs (a package so that ``pkg://conf`` finds them when installed)."""

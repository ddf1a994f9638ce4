"""hgbench's built-in plugins, one module per plugin, registered like third-party ones."""

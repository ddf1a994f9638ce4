"""Built-in recorder plugins."""

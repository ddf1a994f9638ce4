"""Built-in hypergrad plugins."""

"""Built-in hyperparam plugins."""

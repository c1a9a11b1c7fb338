"""The package's base error for bad input, in a module of its own so that every layer (config, methods, data,
spaces) can raise it without importing the configuration module, which itself imports the method registry."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and what is allowed."""

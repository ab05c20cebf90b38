"""The package version (a module of its own, so that any layer can import it without the facade)."""

__version__ = "0.1.0"

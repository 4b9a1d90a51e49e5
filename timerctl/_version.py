"""The version, in one place: read by the package, the User-Agent and the build (pyproject dynamic)."""

__version__ = "0.1.0"

"""timerctl: durable webhook timers for operators."""

from timerctl._version import __version__

__all__ = ["__version__"]

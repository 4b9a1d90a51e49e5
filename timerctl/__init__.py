"""timerctl: durable webhook timers for operators."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("timerctl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

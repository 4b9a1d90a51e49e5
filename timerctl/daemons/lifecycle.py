"""What every daemon shares: the stop flag its signal handlers set, and back-off for reconnecting."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGINT; the daemon's loop checks it between units of work.

    A handler may only set flags: anything heavier (locks, I/O, logging) can deadlock when the signal
    lands inside the same code. A second signal asks for a forced stop: skip the drain.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.forced = threading.Event()

    def request(self) -> None:
        if self.stopping.is_set():
            self.forced.set()
        self.stopping.set()

    def __bool__(self) -> bool:
        return self.stopping.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once on a stop; True when stopping."""
        return self.stopping.wait(max(0.0, seconds))

    def install(self) -> None:
        """Route SIGTERM and SIGINT to ``request`` (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def backoff(first: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Delays for reconnect attempts: doubling from ``first`` up to ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * 2)


class Watchdog:
    """Pings systemd's watchdog (``WATCHDOG=1``) at half its period, when ``WATCHDOG_USEC`` asks for it.

    Call ``ping`` from the daemon's own loop, never from a side thread: a loop that hangs must stop
    the pings so that systemd restarts the daemon.
    """

    def __init__(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self.interval = usec / 2e6
        self._last = 0.0

    def ping(self) -> None:
        if self.interval and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            notify("WATCHDOG=1")


def notify(message: str) -> None:
    """Send an sd_notify message (``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``) when systemd asked for them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    import socket

    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        log.warning("could not notify systemd at %s", os.environ.get("NOTIFY_SOCKET"))

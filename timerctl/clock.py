"""What time it is: the one clock every layer takes as an argument, so tests can set the time.

Nothing below the entry points calls ``datetime.now`` itself: the service, the runner and the consumer's
feed are handed a ``Clock`` (``system_clock`` in production, a ``ManualClock`` in tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to (``advance``, ``set``); safe to read from several threads."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, by: timedelta) -> datetime:
        """Move ``by`` forward; returns the new now."""
        with self._lock:
            self._now += by
            return self._now

    def set(self, at: datetime) -> None:
        with self._lock:
            self._now = at

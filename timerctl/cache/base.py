"""The Cache protocol and the embedded default, no cache at all.

The cache is an accelerator and the only place a timer still in Kafka can be read from; it is never
the source of truth, so every failure degrades to the store with one warning instead of an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from timerctl.model import Timer


class Cache(Protocol):
    def get(self, timer_id: str) -> Timer | None: ...

    def put(self, timer: Timer, now: datetime) -> None:
        """Cache ``timer`` until its expiry plus the grace period."""
        ...

    def put_many(self, timers: Sequence[Timer], now: datetime) -> None:
        """``put`` for many timers in one round trip."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable when the cache cannot be reached."""
        ...

    def close(self) -> None: ...


class NoCache:
    """The embedded default: nothing cached, every read goes to the store."""

    def get(self, timer_id: str) -> Timer | None:
        return None

    def put(self, timer: Timer, now: datetime) -> None:
        return None

    def put_many(self, timers: Sequence[Timer], now: datetime) -> None:
        return None

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

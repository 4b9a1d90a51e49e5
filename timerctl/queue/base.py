"""The Queue protocol: how an accepted create or cancel travels towards the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from timerctl.model import Timer


class Queue(Protocol):
    """A path from the client to the store: straight in (embedded) or through Kafka."""

    #: True when ``submit`` writes the store itself, so its result is the stored timer.
    direct: bool

    def submit(self, timers: Sequence[Timer]) -> list[Timer]:
        """Hand the timers over durably; returns once acknowledged (the stored copies when direct).

        Raises BackendUnavailable when the path is down; nothing is then acknowledged.
        """
        ...

    def submit_one(self, timer: Timer) -> tuple[Timer, bool]:
        """Hand one timer over: the stored timer with this id and whether ``timer`` was new.

        Direct, the store's insert answers (first write wins, so of racing creates exactly one is new).
        Through Kafka the consumer stores it later: ``(timer, True)`` once acknowledged, and the caller's
        lookup before submitting is all that tells a repeat.
        """
        ...

    def submit_cancel(self, timer_id: str) -> None:
        """Publish a cancel so it stays ordered after the timer's create (no-op when direct)."""
        ...

    def close(self) -> None: ...

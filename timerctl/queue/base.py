"""The Queue protocol: how an accepted create, change or cancel travels towards the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from timerctl.model import Timer


class Queue(Protocol):
    """A path from the client to the store: straight in (embedded) or through Kafka."""

    def submit(self, timers: Sequence[Timer]) -> None:
        """Hand the timers over durably (an id already stored keeps its first write); returns once acknowledged.

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

    def submit_change(self, op: str, timer: Timer) -> None:
        """Publish a change already stored (``op`` update, retry or fire, ``timer`` as changed) so it stays
        ordered after the timer's create (no-op when direct); returns once acknowledged.

        Raises BackendUnavailable when the path is down: the change is then stored but not published.
        """
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable when the path cannot be reached (nothing to reach when direct)."""
        ...

    def close(self) -> None: ...

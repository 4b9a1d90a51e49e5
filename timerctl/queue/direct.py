"""The embedded path: a create is written straight into the store."""

from __future__ import annotations

from collections.abc import Sequence

from timerctl.model import Timer
from timerctl.stores.base import Store


class DirectQueue:
    """Queue that inserts into ``store`` at once (first write wins, like the Kafka consumer)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def submit(self, timers: Sequence[Timer]) -> None:
        self.store.insert_many(timers)

    def submit_one(self, timer: Timer) -> tuple[Timer, bool]:
        return self.store.insert(timer)

    def submit_cancel(self, timer_id: str) -> None:
        return None

    def submit_change(self, op: str, timer: Timer) -> None:
        return None

    def ping(self) -> None:
        return None  # the store is the part to ping, and is pinged as such

    def close(self) -> None:
        return None

"""The embedded path: a create is written straight into the store."""

from __future__ import annotations

from collections.abc import Sequence

from timerctl.model import Timer
from timerctl.stores.base import Store


class DirectQueue:
    """Queue that inserts into ``store`` at once (first write wins, like the Kafka consumer)."""

    direct = True

    def __init__(self, store: Store) -> None:
        self.store = store

    def submit(self, timers: Sequence[Timer]) -> list[Timer]:
        if len(timers) == 1:
            return [self.store.insert(timers[0])[0]]
        self.store.insert_many(timers)
        return list(timers)

    def submit_one(self, timer: Timer) -> tuple[Timer, bool]:
        return self.store.insert(timer)

    def submit_cancel(self, timer_id: str) -> None:
        return None

    def close(self) -> None:
        return None

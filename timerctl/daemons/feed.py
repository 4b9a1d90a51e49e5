"""The runners' fan-out from Kafka: near-term creates reach a runner without waiting for a store poll.

Runners form their own consumer group (``<TIMERCTL_GROUP_PREFIX>-runner``) next to the persisting one. A create due
within ``window`` is inserted into the store by the runner that sees it (idempotent, first write wins,
so a racing consumer or a tombstone is never overwritten) and the runner claims at once, still through
the store: the claim is what keeps a timer from firing twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from timerctl.config import Settings
from timerctl.daemons.consumer import Batch, Consumer
from timerctl.daemons.lifecycle import StopFlag
from timerctl.service import Clock
from timerctl.stores.base import Store

log = logging.getLogger(__name__)


class NearTermFeed(Consumer):
    """A Consumer that stores only creates due soon and then wakes its runner; it dead-letters nothing."""

    def __init__(
        self, settings: Settings, store: Store, clock: Clock, wake: Callable[[], None], window: timedelta
    ) -> None:
        super().__init__(settings, store, group_id=settings.runner_group)
        self.clock = clock
        self.wake = wake
        self.window = window

    def _dead_letter(self, batch: Batch) -> None:
        return None  # the persisting consumer owns the dead-letter topic

    def _write(self, batch: Batch) -> None:
        horizon = self.clock() + self.window
        near = [t for t in batch.creates if t.due_at <= horizon]
        if near:
            self.store.insert_many(near)
            self.wake()
            log.debug("feed stored %d near-term timers", len(near))

    def start(self, stop: StopFlag) -> threading.Thread:
        """Run in a daemon thread until ``stop``; the caller joins it while draining."""

        def loop() -> None:
            try:
                self.run(stop)
            finally:
                self.close()

        thread = threading.Thread(target=loop, name="timerctl-feed", daemon=True)
        thread.start()
        return thread

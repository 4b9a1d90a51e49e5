"""The runners' fan-out from Kafka: near-term creates reach a runner without waiting for a store poll.

Runners form their own consumer group (``<TIMERCTL_GROUP_PREFIX>-runner``) next to the persisting one. A
create due within ``window`` is offered to the runner that reads it; the runner's main thread (the one
that owns the store) inserts it — idempotently, first write wins, so a racing consumer or a tombstone is
never overwritten — and claims at once. The claim is still what keeps a timer from firing twice. This
thread only reads Kafka: it never writes the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from timerctl.clock import Clock
from timerctl.config import Settings
from timerctl.daemons.consumer import Batch, GroupReader
from timerctl.daemons.lifecycle import StopFlag
from timerctl.model import Timer

log = logging.getLogger(__name__)


class NearTermFeed(GroupReader):
    """Offers the creates due within ``window`` to its runner; everything else is the consumer's business."""

    def __init__(
        self, settings: Settings, clock: Clock, offer: Callable[[list[Timer]], None], window: timedelta
    ) -> None:
        super().__init__(settings, group_id=settings.runner_group)
        self.clock = clock
        self.offer = offer
        self.window = window

    def _apply(self, batch: Batch) -> None:
        horizon = self.clock() + self.window
        near = [t for t in batch.creates if t.due_at <= horizon]
        if near:
            self.offer(near)
            log.debug("feed offered %d near-term timers", len(near))

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

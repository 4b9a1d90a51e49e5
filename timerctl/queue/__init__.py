"""Queues: how creates reach the store. ``open_queue`` picks direct or Kafka from the settings."""

from __future__ import annotations

from collections.abc import Callable

from timerctl.config import Settings
from timerctl.queue.base import Queue
from timerctl.stores.base import Store

__all__ = ["Queue", "open_queue"]


def open_queue(settings: Settings, store: Callable[[], Store]) -> Queue:
    """Kafka when ``TIMERCTL_KAFKA_BOOTSTRAP`` is set, else straight into the store."""
    if settings.kafka_bootstrap:
        from timerctl.queue.kafka import KafkaQueue

        queue: Queue = KafkaQueue(settings.kafka_bootstrap, settings.topic)
        return queue
    from timerctl.queue.direct import DirectQueue

    return DirectQueue(store())

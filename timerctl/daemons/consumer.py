"""``timerctl serve consumer``: applies the creates, changes and cancels on the Kafka topic to the store.

At least once, made exactly once by the store: a batch's offsets are committed only after its store
write succeeded, and the write is idempotent (first write wins, a change is taken only over an earlier
revision, a repeated cancel is ignored), so a crash between the two only re-applies a batch. A record
that cannot be decoded goes to ``<topic>.dlq`` with the reason and is then skipped, so it never blocks
its partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from timerctl import metrics
from timerctl.changes import adopt
from timerctl.clock import Clock, system_clock
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag, Watchdog, backoff, notify
from timerctl.model import BackendUnavailable, Conflict, InvalidInput, NotFound, Timer, utc
from timerctl.queue.kafka import (
    DLQ_REASON_HEADER,
    RecordProducer,
    decode,
    dlq_topic,
    encode_dead_letter,
    unavailable,
)
from timerctl.stores import open_store
from timerctl.stores.base import Store

log = logging.getLogger(__name__)

#: A member that has not polled for this long loses its partitions to the others, so a killed
#: consumer's partitions move on after about this long (the store write of one batch is far shorter).
MAX_POLL_INTERVAL_MS = 10_000
MAX_RECORDS = 2000
POLL_TIMEOUT_MS = 500
COMMIT_TIMEOUT_MS = 5000


@dataclass
class Batch:
    """One poll's records, decoded: what to write, what to dead-letter, and the offsets to commit after."""

    size: int = 0
    creates: list[Timer] = field(default_factory=list)
    #: The timers carried by update, retry and fire records, as changed.
    changes: list[Timer] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    rejects: list[tuple[Any, str]] = field(default_factory=list)
    offsets: dict[Any, Any] = field(default_factory=dict)
    dead_lettered: bool = False


def decode_batch(polled: dict[Any, list[Any]]) -> Batch:
    """The Batch for ``KafkaConsumer.poll`` output; undecodable records become rejects with a reason."""
    batch = Batch()
    for tp, records in polled.items():
        if not records:
            continue
        for record in records:
            try:
                message = decode(record.value)
            except InvalidInput as exc:
                batch.rejects.append((record, str(exc)))
                continue
            if message.op == "cancel":
                batch.cancels.append(message.timer_id)
            elif message.timer is not None:
                (batch.creates if message.op == "create" else batch.changes).append(message.timer)
        batch.size += len(records)
        batch.offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
    return batch


def broker_of(settings: Settings) -> str:
    """The configured Kafka brokers; InvalidInput when there are none (a consumer has nothing to read)."""
    if not settings.kafka_bootstrap:
        raise InvalidInput(
            "the consumer needs a broker: set TIMERCTL_KAFKA_BOOTSTRAP (host:port); without Kafka, creates "
            "go straight to the store and no consumer is needed"
        )
    return settings.kafka_bootstrap


class GroupReader:
    """A member of a Kafka consumer group on the timers topic: poll, decode, apply, commit.

    ``run_once`` is one unit of work (poll → ``_apply`` → commit); ``run`` loops over it until stopped,
    backing off while Kafka or whatever ``_apply`` writes to is down. Subclasses say what a batch is
    applied to: the store (``Consumer``) or a runner's near-term inbox (``feed.NearTermFeed``).
    """

    #: Whether this reader's lag is the one ``timerctl_consumer_lag`` reports.
    reports_lag = False

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        max_records: int = MAX_RECORDS,
        max_poll_interval_ms: int = MAX_POLL_INTERVAL_MS,
        poll_timeout_ms: int = POLL_TIMEOUT_MS,
    ) -> None:
        self.bootstrap = broker_of(settings)
        self.topic = settings.topic
        self.group_id = group_id
        self.max_records = max_records
        self.max_poll_interval_ms = max_poll_interval_ms
        self.poll_timeout_ms = poll_timeout_ms
        self.consumer: Any = None
        #: A polled batch not yet applied (its target was down): retried before polling again.
        self.pending: Batch | None = None
        self.watchdog = Watchdog()

    def _apply(self, batch: Batch) -> None:
        """Apply one decoded batch; BackendUnavailable keeps it pending and uncommitted."""
        raise NotImplementedError

    def connect(self) -> None:
        """Subscribe to the topic; BackendUnavailable (one line) when the broker is unreachable."""
        session_ms = min(10_000, self.max_poll_interval_ms)
        try:
            self.consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap.split(","),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.max_records,
                max_poll_interval_ms=self.max_poll_interval_ms,
                session_timeout_ms=session_ms,
                heartbeat_interval_ms=session_ms // 3,
                # A join may be held by the broker for up to max_poll_interval_ms: wait longer than that.
                request_timeout_ms=self.max_poll_interval_ms + 5000,
                api_version_auto_timeout_ms=2000,
                reconnect_backoff_max_ms=1000,
                # A fetch answer may exceed kafka-python's 1 MB frame limit (Tansu does not cut it at
                # fetch_max_bytes): allow frames well above the fetch size instead of failing the fetch.
                fetch_max_bytes=16 * 1024 * 1024,
                receive_message_max_bytes=64 * 1024 * 1024,
            )
            self.consumer.subscribe([self.topic])
        except KafkaError as exc:
            raise unavailable(self.bootstrap, exc) from exc
        log.info("consumer subscribed to %s at %s as group %s", self.topic, self.bootstrap, self.group_id)

    def run_once(self) -> int:
        """The number of records applied by one poll → apply → commit (0 when none arrived).

        BackendUnavailable when what the batch is applied to is down: the batch is kept, nothing is
        committed, and the next call retries it before polling again.
        """
        if self.consumer is None:
            self.connect()
        if self.pending is None:
            polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
            if not polled:
                return 0
            self.pending = decode_batch(polled)
        batch = self.pending
        self._apply(batch)
        self.pending = None
        self._commit(batch)
        if self.reports_lag:
            self._report_lag()
        return batch.size

    def _report_lag(self) -> None:
        """Records behind the high watermarks of our partitions, from the last fetch responses."""
        lag = 0
        try:
            for tp in self.consumer.assignment():
                high = self.consumer.highwater(tp)
                if high is not None:
                    lag += max(0, high - self.consumer.position(tp, timeout_ms=100))
        except KafkaError as exc:  # a metric is never worth failing a batch for
            log.debug("consumer lag unknown: %s", exc)
            return
        metrics.CONSUMER_LAG.set(lag)

    def _commit(self, batch: Batch) -> None:
        """Commit the batch's offsets for the partitions still ours; a failure only means a replay."""
        assigned = self.consumer.assignment()
        offsets = {tp: meta for tp, meta in batch.offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            # Already stored: the records will be consumed again and the idempotent write absorbs them.
            log.warning("commit to %s failed, %d records will be replayed: %s", self.bootstrap, batch.size, exc)

    def idle(self, seconds: float, stop: StopFlag) -> None:
        """Wait out a back-off while staying in the group: poll with every partition paused."""
        deadline = time.monotonic() + seconds
        while not stop and (left := deadline - time.monotonic()) > 0:
            self.watchdog.ping()
            if self.consumer is None:
                stop.wait(left)
                continue
            try:
                self.consumer.pause(*self.consumer.assignment())
                stray = self.consumer.poll(timeout_ms=int(min(left, 0.5) * 1000), max_records=self.max_records)
                # Partitions assigned by a rebalance meanwhile are not paused: hand their records back.
                for tp, records in stray.items():
                    if records:
                        self.consumer.seek(tp, records[0].offset)
            except KafkaError as exc:
                log.warning("Kafka at %s failed while waiting: %s", self.bootstrap, exc)
                stop.wait(left)
        if self.consumer is not None:
            self.consumer.resume(*self.consumer.paused())

    def run(self, stop: StopFlag) -> None:
        """Apply batches until ``stop``; never raises for an unavailable store or broker."""
        delays: Iterator[float] | None = None
        ready = False
        while not stop:
            self.watchdog.ping()
            try:
                if self.consumer is None:
                    self.connect()
                    if not ready:
                        notify("READY=1")
                        ready = True
                self.run_once()
                delays = None
            except BackendUnavailable as exc:
                delays = delays or backoff()
                delay = next(delays)
                log.warning("%s; retrying in %.1fs", exc, delay)
                self.idle(delay, stop)
            except KafkaError as exc:
                delays = delays or backoff()
                delay = next(delays)
                log.warning("Kafka at %s failed (%s); reconnecting in %.1fs", self.bootstrap, exc, delay)
                self.disconnect()
                stop.wait(delay)
        if self.pending is not None:
            log.warning("stopping with %d records not stored; they will be consumed again", self.pending.size)

    def disconnect(self) -> None:
        """Leave the group without committing (a batch not stored is dropped, to be consumed again)."""
        consumer, self.consumer, self.pending = self.consumer, None, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=COMMIT_TIMEOUT_MS)
            except KafkaError as exc:
                log.warning("closing the Kafka consumer failed: %s", exc)

    def close(self) -> None:
        """Leave the group."""
        self.disconnect()


class Consumer(GroupReader):
    """The consumer daemon: applies each batch to the store, undecodable records to the dead-letter topic."""

    reports_lag = True

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        group_id: str | None = None,
        max_records: int = MAX_RECORDS,
        max_poll_interval_ms: int = MAX_POLL_INTERVAL_MS,
        poll_timeout_ms: int = POLL_TIMEOUT_MS,
        clock: Clock = system_clock,
    ) -> None:
        super().__init__(
            settings,
            group_id=group_id or settings.consumer_group,
            max_records=max_records,
            max_poll_interval_ms=max_poll_interval_ms,
            poll_timeout_ms=poll_timeout_ms,
        )
        self.store = store
        self.clock = clock
        self._producer: RecordProducer | None = None

    def _apply(self, batch: Batch) -> None:
        self._dead_letter(batch)
        self._write(batch)

    def _dead_letter(self, batch: Batch) -> None:
        """Publish the batch's undecodable records to the dead-letter topic and wait for the acks."""
        if not batch.rejects or batch.dead_lettered:
            return
        if self._producer is None:
            self._producer = RecordProducer(self.bootstrap)
        target = dlq_topic(self.topic)
        self._producer.publish(
            target,
            (
                (
                    record.key,
                    encode_dead_letter(reason, record.topic, record.partition, record.offset, record.value),
                    [(DLQ_REASON_HEADER, reason.encode())],
                )
                for record, reason in batch.rejects
            ),
        )
        for record, reason in batch.rejects:
            log.warning(
                "record %s[%d]@%d sent to %s: %s", record.topic, record.partition, record.offset, target, reason
            )
        batch.dead_lettered = True
        metrics.DLQ.inc(len(batch.rejects))

    def _write(self, batch: Batch) -> None:
        """Creates first (one idempotent insert), then changes, then cancels; safe to repeat.

        Grouped by kind rather than in record order, which keeps each timer's own order: its create comes
        before its changes, and nothing follows its cancel (a cancelled timer cannot be changed).
        """
        added = self.store.insert_many(batch.creates) if batch.creates else 0
        if batch.changes:
            added += self._write_changes(batch.changes)
        metrics.PERSISTED.inc(added)
        now = utc(self.clock())
        for timer_id in batch.cancels:
            try:
                self.store.cancel(timer_id, now)
            except (NotFound, Conflict) as exc:
                log.info("cancel of %s ignored: %s", timer_id, exc)
        sizes = (len(batch.creates), len(batch.changes), len(batch.cancels))
        log.debug("stored %d new of %d creates and %d changes, %d cancels", added, *sizes)

    def _write_changes(self, changes: list[Timer]) -> int:
        """Store each timer's latest change record where it is a later revision; how many ids were new.

        An id not stored yet takes the record's timer (one idempotent insert): first write wins, so the
        create still queued behind it becomes a no-op. Inserted before the compare-and-set, never after a
        miss, so a create stored meanwhile (by a runner's feed) is changed rather than kept.
        """
        latest: dict[str, Timer] = {}
        for timer in changes:
            held = latest.get(timer.timer_id)
            if held is None or timer.revision >= held.revision:
                latest[timer.timer_id] = timer
        added = self.store.insert_many(list(latest.values()))
        for timer in latest.values():
            try:
                self.store.modify(timer.timer_id, adopt(timer))
            except NotFound as exc:  # purged since it ended
                log.info("change of %s to revision %d ignored: %s", timer.timer_id, timer.revision, exc)
            except Conflict as exc:  # stored corrupt, or lost MAX_RACES races to other writers in a row
                log.warning("change of %s to revision %d not stored: %s", timer.timer_id, timer.revision, exc)
        return added

    def close(self) -> None:
        """Leave the group and close the dead-letter producer (the store belongs to the caller)."""
        super().close()
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close()


def _open_store(settings: Settings, stop: StopFlag) -> Store | None:
    """The store, retried with back-off until it opens; None when stopped first."""
    for delay in backoff():
        try:
            return open_store(settings)
        except BackendUnavailable as exc:
            log.warning("%s; retrying in %.1fs", exc, delay)
        if stop.wait(delay):
            return None
    return None  # pragma: no cover - backoff() never ends


def serve(
    settings: Settings,
    stop: StopFlag,
    store: Store | None = None,
    *,
    group_id: str | None = None,
    max_records: int = MAX_RECORDS,
    max_poll_interval_ms: int = MAX_POLL_INTERVAL_MS,
    clock: Clock = system_clock,
) -> int:
    """Exit code 0 once ``stop`` is set and the batch in hand is stored and committed.

    Opens the store from ``settings`` unless given one (and closes only a store it opened); ``clock`` is
    when cancels happen. Raises InvalidInput when no broker is configured.
    """
    broker_of(settings)  # before the store is opened (with retries): a missing broker is a setting, not an outage
    daemon_store = store
    if daemon_store is None:
        daemon_store = _open_store(settings, stop)
        if daemon_store is None:
            return 0
    consumer = Consumer(
        settings,
        daemon_store,
        group_id=group_id,
        max_records=max_records,
        max_poll_interval_ms=max_poll_interval_ms,
        clock=clock,
    )
    log.info("consumer starting: %s", settings.describe())
    try:
        consumer.run(stop)
    finally:
        notify("STOPPING=1")
        consumer.close()
        if store is None:
            daemon_store.close()
    log.info("consumer stopped")
    return 0

"""The consumer daemon (``daemons/consumer.py``) against a real broker and the SQLite store: in a thread
(``consumer_thread``), then as a process. How a change record is taken over a stored timer (``adopt``) is
first pinned down on the store alone."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.factories import make_timer, process_env
from tests.fixtures_kafka import (
    TEST_POLL_INTERVAL_MS,
    TansuBroker,
    committed_offsets,
    consumer_thread,
    is_empty,
    read_topic,
    wait_fully_committed,
)
from tests.polling import wait_for
from timerctl import changes
from timerctl.changes import Update, adopt
from timerctl.config import Settings
from timerctl.daemons.consumer import Consumer
from timerctl.model import BackendUnavailable, Status, Timer, utc
from timerctl.queue.kafka import DLQ_REASON_HEADER, KafkaQueue, dlq_topic, encode_create
from timerctl.stores.sqlite import SqliteStore

NOW = utc(datetime.now(UTC))  # milliseconds, as stored


def batch(count: int, prefix: str = "c") -> list[Timer]:
    """``prefix-0``... made at NOW, each due a second after the one before from an hour on, payload ``{"i": i}``."""
    return [
        make_timer(
            f"{prefix}-{i}",
            NOW + timedelta(hours=1, seconds=i),
            url="http://127.0.0.1:9/hook",
            created_at=NOW,
            payload={"i": i},
        )
        for i in range(count)
    ]


def submit(bootstrap: str, topic: str, timers: Sequence[Timer]) -> None:
    queue = KafkaQueue(bootstrap, topic)
    try:
        queue.submit(timers)
    finally:
        queue.close()


def produce_raw(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]], partition: int = 0) -> None:
    """Publish (key, value) pairs in order to one partition, acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


def count_rows(db: Path) -> int:
    store = SqliteStore(str(db))
    try:
        return sum(store.counts().values())
    finally:
        store.close()


@pytest.fixture
def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(kafka_bootstrap: str, kafka_topic: str, tmp_path: Path) -> Settings:
    return Settings(db=str(tmp_path / "timers.db"), kafka_bootstrap=kafka_bootstrap, topic=kafka_topic)


def test_consumes_2000_timers_into_the_store_once(settings: Settings, store: SqliteStore, group: str) -> None:
    timers = batch(2000)
    submit(settings.kafka_bootstrap, settings.topic, timers)
    submit(settings.kafka_bootstrap, settings.topic, timers[:100])  # a retried submit: duplicates
    with consumer_thread(settings, store, group):
        wait_for(lambda: store.counts()[Status.SCHEDULED] == 2000, 30, "2000 timers in the store")
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 2100)
    assert sum(store.counts().values()) == 2000
    assert store.get("c-1999") == timers[1999]


def test_malformed_records_go_to_the_dlq_and_the_partition_moves_on(
    settings: Settings, store: SqliteStore, group: str
) -> None:
    good = batch(2, prefix="good")
    produce_raw(
        settings.kafka_bootstrap,
        settings.topic,
        [
            (b"good-0", encode_create(good[0])),
            (b"bad-utf8", b"\xff\xfe"),
            (b"bad-version", b'{"v": 2, "op": "cancel", "timerId": "x"}'),
            (b"good-1", encode_create(good[1])),
        ],
    )
    with consumer_thread(settings, store, group):
        wait_for(lambda: store.get("good-1") is not None, 20, "the record after the bad ones to be stored")
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 4)
    assert store.get("good-0") == good[0]

    letters = read_topic(settings.kafka_bootstrap, dlq_topic(settings.topic), 2, partitions=1)
    by_key = {r.key: r for r in letters}
    assert set(by_key) == {b"bad-utf8", b"bad-version"}
    utf8 = json.loads(by_key[b"bad-utf8"].value)
    assert "not UTF-8" in utf8["reason"]
    assert (utf8["topic"], utf8["partition"], utf8["offset"]) == (settings.topic, 0, 1)
    assert utf8["valueBase64"] == "//4="
    version = json.loads(by_key[b"bad-version"].value)
    assert "unsupported record version 2" in version["reason"] and version["offset"] == 2
    assert version["value"] == '{"v": 2, "op": "cancel", "timerId": "x"}'
    assert dict(by_key[b"bad-version"].headers)[DLQ_REASON_HEADER].decode() == version["reason"]


def test_the_consumer_dead_letters_a_foreign_running_create_and_stores_the_rest(
    settings: Settings, store: SqliteStore
) -> None:
    """A create record must describe a new timer (the rule's cases: ``test_kafka_queue.py``)."""
    good = make_timer("good", now=NOW, url="https://hooks.example.com/g")
    foreign = make_timer("foreign", now=NOW, url="https://hooks.example.com/x", payload={"k": 1}).to_record()
    running = json.dumps({"v": 1, "op": "create", "timer": foreign | {"timerStatus": "Running"}}).encode()
    produce_raw(settings.kafka_bootstrap, settings.topic, [(b"foreign", running), (b"good", encode_create(good))])
    with consumer_thread(settings, store):
        wait_for(lambda: store.get("good") is not None, 20, "the create after the foreign one")
    assert store.get("good") == good
    assert store.get("foreign") is None
    [letter] = read_topic(settings.kafka_bootstrap, dlq_topic(settings.topic), 1, partitions=1)
    reason = json.loads(letter.value)["reason"]
    assert reason.startswith("create record is not a new timer: timerStatus is 'Running'")
    assert dict(letter.headers)[DLQ_REASON_HEADER].decode() == reason


def test_create_then_cancel_is_stored_cancelled(settings: Settings, store: SqliteStore, group: str) -> None:
    [timer] = batch(1, prefix="cc")
    queue = KafkaQueue(settings.kafka_bootstrap, settings.topic)
    try:
        queue.submit([timer])
        queue.submit_cancel(timer.timer_id)
        queue.submit_cancel("never-created")  # NotFound: logged and skipped
    finally:
        queue.close()
    with consumer_thread(settings, store, group):
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 3)
    stored = store.get(timer.timer_id)
    assert stored is not None and stored.status is Status.CANCELLED
    assert store.get("never-created") is None


def test_tombstone_first_then_create_stays_cancelled(settings: Settings, store: SqliteStore, group: str) -> None:
    [timer] = batch(1, prefix="tomb")
    store.cancel(timer.timer_id, NOW, fallback=timer)  # cancelled while its create was still in the queue
    submit(settings.kafka_bootstrap, settings.topic, [timer])
    with consumer_thread(settings, store, group):
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 1)
    stored = store.get(timer.timer_id)
    assert stored is not None and stored.status is Status.CANCELLED


# --- change records: taken only over an earlier revision of a timer a person could still change -----------

#: A timer as created, and as a person updated it (revision 1).
CREATED = make_timer("t", NOW + timedelta(hours=1), url="https://hooks.example.com/a", created_at=NOW, payload={"v": 0})
UPDATED = changes.update(
    CREATED, Update(expiry_time=NOW + timedelta(hours=2), webhook_url="https://hooks.example.com/b", payload={"v": 1})
)
#: When the timers below were attempted, and when the consumer's clock cancels.
TRIED_AT = NOW + timedelta(hours=1)
CANCELLED_AT = NOW + timedelta(minutes=30)


def retrying(timer: Timer) -> Timer:
    """``timer`` after two failed attempts, waiting for the third."""
    return replace(
        timer,
        status=Status.RETRYING,
        attempts=2,
        fired_at=TRIED_AT,
        last_error="HTTP 503",
        due_at=TRIED_AT + timedelta(seconds=3),
        delivery_count=2,
    )


def failed(timer: Timer) -> Timer:
    """``timer`` after its last attempt failed."""
    return replace(retrying(timer), status=Status.FAILED, attempts=8, delivery_count=8, ended_at=TRIED_AT)


def adopted_by_the_store(store: SqliteStore, stored: Timer, record: Timer) -> Timer | None:
    """What ``store`` holds after ``stored`` was stored and then ``record`` taken over it through ``adopt``."""
    store.insert(stored)
    store.modify(stored.timer_id, adopt(record))
    return store.get(stored.timer_id)


def test_a_later_revision_replaces_a_scheduled_timer_and_drops_the_runners_lease(store: SqliteStore) -> None:
    leased = replace(CREATED, lease_owner="runner-1", lease_until=NOW + timedelta(seconds=30))
    assert adopted_by_the_store(store, leased, UPDATED) == UPDATED


def test_a_later_revision_of_a_retrying_timer_keeps_the_stores_history(store: SqliteStore) -> None:
    stored = retrying(CREATED)
    fired = changes.fire_now(stored, NOW)
    record = replace(fired, last_error="HTTP 502 elsewhere", delivery_count=5)  # history is the store's own
    assert adopted_by_the_store(store, stored, record) == fired


def test_a_retry_record_schedules_a_failed_timer_again(store: SqliteStore) -> None:
    stored = failed(CREATED)
    retried = changes.retry(stored, TRIED_AT + timedelta(hours=1))
    got = adopted_by_the_store(store, stored, retried)
    assert got == retried
    assert got is not None and (got.status, got.attempts, got.ended_at, got.last_error) == (
        Status.SCHEDULED,
        0,
        None,
        "HTTP 503",
    )


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(replace(CREATED, revision=2, webhook_url="https://hooks.example.com/later"), id="later-revision"),
        pytest.param(replace(CREATED, revision=1, webhook_url="https://hooks.example.com/same"), id="same-revision"),
        pytest.param(replace(CREATED, status=Status.RUNNING, lease_owner="r", lease_until=TRIED_AT), id="running"),
        pytest.param(replace(CREATED, status=Status.FINISHED, fired_at=TRIED_AT, ended_at=TRIED_AT), id="finished"),
        pytest.param(replace(CREATED, status=Status.CANCELLED, ended_at=NOW), id="cancelled"),
    ],
)
def test_a_record_no_later_than_the_stored_timer_or_of_one_past_changing_changes_nothing(
    store: SqliteStore, stored: Timer
) -> None:
    assert UPDATED.revision == 1
    assert adopted_by_the_store(store, stored, UPDATED) == stored


def test_change_records_are_stored_over_earlier_revisions_only_and_a_replay_changes_nothing(
    settings: Settings, store: SqliteStore, group: str
) -> None:
    def made(timer_id: str) -> Timer:
        return replace(CREATED, timer_id=timer_id)

    def updated(timer_id: str) -> Timer:
        return replace(UPDATED, timer_id=timer_id)

    store.insert_many(
        [
            made("newer"),  # its create consumed before: the update is taken
            replace(made("older"), revision=2, payload={"v": 2}),  # changed twice since: the update is old news
            replace(made("running"), status=Status.RUNNING, lease_owner="r", lease_until=TRIED_AT),  # POST started
            made("doomed"),  # updated, then cancelled
        ]
    )
    fired = changes.fire_now(made("absent"), NOW)
    queue = KafkaQueue(settings.kafka_bootstrap, settings.topic)
    try:
        for timer_id in ("newer", "older", "running", "doomed"):
            queue.submit_change("update", updated(timer_id))
        queue.submit_change("fire", fired)
        queue.submit([made("absent")])  # a create submitted again after the change: first write wins
        queue.submit_cancel("doomed")
    finally:
        queue.close()

    # A record per poll: the fire of "absent" is stored before its create is read.
    with consumer_thread(settings, store, group, max_records=1, clock=lambda: CANCELLED_AT):
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 7)
    assert store.get("newer") == updated("newer")
    assert store.get("older") == replace(made("older"), revision=2, payload={"v": 2})
    assert store.get("running") == replace(
        made("running"), status=Status.RUNNING, lease_owner="r", lease_until=TRIED_AT
    )
    assert store.get("absent") == fired
    assert store.get("doomed") == replace(updated("doomed"), status=Status.CANCELLED, revision=2, ended_at=CANCELLED_AT)
    assert is_empty(settings.kafka_bootstrap, dlq_topic(settings.topic))

    stored = store.find(limit=100)
    replay = f"{group}-replay"
    with consumer_thread(settings, store, replay, clock=lambda: CANCELLED_AT + timedelta(hours=1)):
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, replay, 7)
    assert store.find(limit=100) == stored


def test_a_log_consumed_into_an_empty_store_leaves_each_timer_as_last_changed(
    settings: Settings, tmp_path: Path
) -> None:
    """The same end whether each record is a batch of its own (record order) or batches group them by kind."""
    created = [replace(CREATED, timer_id=name) for name in ("moved", "fired", "doomed", "retried")]
    moved, fired, doomed, retried = created
    moved_1 = changes.update(moved, Update(webhook_url="https://hooks.example.com/moved"))
    moved_2 = changes.fire_now(moved_1, NOW)
    fired_1 = changes.fire_now(fired, NOW)
    doomed_1 = changes.update(doomed, Update(payload={"v": "doomed"}))
    retried_1 = changes.retry(failed(retried), TRIED_AT + timedelta(hours=1))  # failed in the store that published it
    queue = KafkaQueue(settings.kafka_bootstrap, settings.topic)
    try:
        queue.submit(created)
        queue.submit_change("update", moved_1)
        queue.submit_change("fire", fired_1)
        queue.submit_change("update", doomed_1)
        queue.submit_change("retry", retried_1)
        queue.submit_change("fire", moved_2)
        queue.submit_cancel("doomed")
    finally:
        queue.close()
    expected = {
        "moved": moved_2,
        "fired": fired_1,
        "doomed": replace(doomed_1, status=Status.CANCELLED, revision=2, ended_at=CANCELLED_AT),
        # The attempts were made elsewhere: this store has no history of them.
        "retried": replace(retried_1, last_error=None, delivery_count=0),
    }

    one_by_one, batched = SqliteStore(str(tmp_path / "one.db")), SqliteStore(str(tmp_path / "batched.db"))
    groups = [f"g-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        with (
            consumer_thread(settings, one_by_one, groups[0], max_records=1, clock=lambda: CANCELLED_AT),
            consumer_thread(settings, batched, groups[1], clock=lambda: CANCELLED_AT),
        ):
            for group in groups:
                wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 10)
        for store in (one_by_one, batched):
            assert {t.timer_id: t for t in store.find(limit=100)} == expected
    finally:
        one_by_one.close()
        batched.close()


class FlakyStore:
    """The SQLite store with ``insert_many`` down for its first ``failures`` calls."""

    def __init__(self, inner: SqliteStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def insert_many(self, timers: Sequence[Timer]) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise BackendUnavailable(f"store down (call {self.calls})")
        return self.inner.insert_many(timers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_store_down_commits_nothing_then_stores_everything_once(
    settings: Settings, store: SqliteStore, group: str
) -> None:
    submit(settings.kafka_bootstrap, settings.topic, batch(300))
    flaky = FlakyStore(store, failures=2)
    consumer = Consumer(settings, flaky, group_id=group, max_poll_interval_ms=TEST_POLL_INTERVAL_MS)
    try:

        def attempt() -> bool:
            try:
                consumer.run_once()
            except BackendUnavailable:
                return True
            return False

        wait_for(attempt, 20, "a batch to reach the failing store")
        with pytest.raises(BackendUnavailable):
            consumer.run_once()  # the same batch again, still down
        assert consumer.pending is not None
        committed = committed_offsets(settings.kafka_bootstrap, settings.topic, group)
        assert set(committed.values()) == {None}, "committed while the store was down"
        assert count_rows(Path(settings.db_path)) == 0

        applied = 0

        def drain() -> bool:
            nonlocal applied
            applied += consumer.run_once()
            return store.counts()[Status.SCHEDULED] == 300

        wait_for(drain, 20, "all 300 timers stored after the store came back")
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 300)
        assert applied == 300 and flaky.calls >= 3
    finally:
        consumer.close()


def test_store_down_in_the_loop_backs_off_and_recovers(settings: Settings, store: SqliteStore, group: str) -> None:
    submit(settings.kafka_bootstrap, settings.topic, batch(500))
    flaky = FlakyStore(store, failures=2)
    with consumer_thread(settings, flaky, group):
        wait_for(lambda: store.counts()[Status.SCHEDULED] == 500, 30, "500 timers after the outage")
        wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 500)
    assert flaky.calls >= 3


def test_waits_for_an_unreachable_broker_and_stops_cleanly_when_it_is_lost(
    private_kafka_broker: TansuBroker, tmp_path: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = private_kafka_broker
    settings = Settings(db=str(tmp_path / "timers.db"), kafka_bootstrap=broker.bootstrap, topic="outage")
    store = SqliteStore(settings.db_path)
    broker.stop()
    try:
        with consumer_thread(settings, store, group):
            wait_for(lambda: f"{broker.bootstrap} is unavailable" in caplog.text, 15, "a failed connect")
            broker.start()  # the consumer, backing off, connects on its next attempt (and creates the topic)
            submit(broker.bootstrap, "outage", batch(20, prefix="o"))
            wait_for(lambda: store.counts()[Status.SCHEDULED] == 20, 30, "timers once the broker is up")
            broker.stop()  # lost while connected: the daemon must neither crash nor hang on stop
    finally:
        store.close()


# --- as a process ---------------------------------------------------------------------------------------

ENTRY = """
import logging, os, sys
from timerctl.config import load_settings
from timerctl.daemons.consumer import serve
from timerctl.daemons.lifecycle import StopFlag
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
flag = StopFlag()
flag.install()
poll_ms = int(os.environ["TEST_POLL_INTERVAL_MS"])
sys.exit(serve(load_settings(), flag, group_id=os.environ["TEST_GROUP"], max_records=500, max_poll_interval_ms=poll_ms))
"""


@pytest.fixture
def start_consumer(settings: Settings, group: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start the consumer daemon as a process (``ENTRY``) in ``group``, logging to ``tmp_path/consumer.log``;
    ``extra_env`` adds variables. Whatever still runs at the end of the test is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra_env: str) -> subprocess.Popen[bytes]:
        env = {
            **process_env(
                tmp_path, db=settings.db_path, kafka_bootstrap=settings.kafka_bootstrap, topic=settings.topic
            ),
            "TEST_GROUP": group,
            "TEST_POLL_INTERVAL_MS": str(TEST_POLL_INTERVAL_MS),
            **extra_env,
        }
        with open(tmp_path / "consumer.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-c", ENTRY], env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_process_killed_mid_ingest_restarts_without_loss_and_stops_on_sigterm(
    settings: Settings, group: str, tmp_path: Path, start_consumer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    db, log = Path(settings.db_path), tmp_path / "consumer.log"
    chunks = [batch(5000, prefix="k")[i : i + 500] for i in range(0, 5000, 500)]
    submit(settings.kafka_bootstrap, settings.topic, chunks[0])
    process = start_consumer()
    wait_for(lambda: db.exists() and count_rows(db) >= 500, 30, "the first chunk stored")
    for chunk in chunks[1:5]:
        submit(settings.kafka_bootstrap, settings.topic, chunk)
    process.kill()  # mid-ingest: batches polled but not yet stored or committed
    assert process.wait(10) == -signal.SIGKILL
    assert count_rows(db) < 2500
    for chunk in chunks[5:]:
        submit(settings.kafka_bootstrap, settings.topic, chunk)

    process = start_consumer()
    wait_for(lambda: count_rows(db) == 5000, 45, "all 5000 timers after the restart")
    wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 5000)

    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0, log.read_text()
    store = SqliteStore(str(db))
    try:
        assert store.counts()[Status.SCHEDULED] == 5000
        assert {t.timer_id for t in store.find(limit=10_000)} == {f"k-{i}" for i in range(5000)}
    finally:
        store.close()
    wait_fully_committed(settings.kafka_bootstrap, settings.topic, group, 5000)
    assert "consumer stopped" in log.read_text()


def ids_below_committed(bootstrap: str, topic: str, group: str, total: int) -> set[str]:
    """The keys of the records before ``group``'s committed offset in their partition."""
    committed = committed_offsets(bootstrap, topic, group)
    records = read_topic(bootstrap, topic, total)
    return {r.key.decode() for r in records if r.offset < (committed[r.partition] or 0)}


def test_sigterm_mid_ingest_finishes_the_batch_commits_and_exits_0(
    settings: Settings, group: str, tmp_path: Path, start_consumer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    db, log = Path(settings.db_path), tmp_path / "consumer.log"
    submit(settings.kafka_bootstrap, settings.topic, batch(5000, prefix="s"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify.sock"))
        process = start_consumer(NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
        wait_for(lambda: db.exists() and count_rows(db) >= 500, 30, "ingest to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, log.read_text()
        systemd.settimeout(1)
        assert [systemd.recv(64), systemd.recv(64)] == [b"READY=1", b"STOPPING=1"]
    store = SqliteStore(str(db))
    try:
        stored = {t.timer_id for t in store.find(limit=10_000)}
    finally:
        store.close()
    # Exactly what was stored was committed: nothing stored is left to replay, nothing committed is missing.
    assert stored == ids_below_committed(settings.kafka_bootstrap, settings.topic, group, 5000)
    assert "consumer stopped" in log.read_text()

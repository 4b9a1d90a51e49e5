"""A create record must describe a new timer; anything else is dead-lettered with the fields at fault.

Before this rule a foreign producer's ``"timerStatus": "Running"`` was stored as Running with no lease and
never fired. Lease fields are never taken from a record. The last test runs the consumer on a real broker.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.fixtures_kafka import read_topic, wait_for
from timerctl.config import Settings
from timerctl.daemons.consumer import serve
from timerctl.daemons.lifecycle import StopFlag
from timerctl.model import InvalidInput, Status, Timer, format_instant, utc
from timerctl.queue.kafka import DLQ_REASON_HEADER, decode, dlq_topic, encode_create
from timerctl.stores.sqlite import SqliteStore

NOW = utc(datetime.now(UTC))
EXPIRY = NOW + timedelta(hours=1)


def record(timer_id: str = "t-1", **changes: Any) -> dict[str, Any]:
    return Timer(timer_id, "https://hooks.example.com/x", EXPIRY, NOW, payload={"k": 1}).to_record() | changes


def value(timer: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "op": "create", "timer": timer}).encode()


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="as-encoded"),
        pytest.param({"timerStatus": "Scheduled", "attempts": 0, "firedAt": None, "lastError": None}, id="explicit"),
        pytest.param({"dueAt": format_instant(EXPIRY)}, id="due-at-expiry"),
    ],
)
def test_a_new_timer_is_accepted(changes: dict[str, Any]) -> None:
    message = decode(value(record(**changes)))
    assert message.timer is not None and message.timer.status is Status.SCHEDULED


def test_fields_a_new_timer_does_not_have_may_be_left_out() -> None:
    minimal = {k: v for k, v in record().items() if k in ("timerId", "webhookUrl", "expiryTime", "createdAt")}
    message = decode(value(minimal))
    assert message.timer == Timer("t-1", "https://hooks.example.com/x", EXPIRY, NOW)


@pytest.mark.parametrize(
    ("changes", "fault"),
    [
        pytest.param({"timerStatus": "Running"}, "timerStatus is 'Running'", id="running"),
        pytest.param({"timerStatus": "Finished"}, "timerStatus is 'Finished'", id="finished"),
        pytest.param({"timerStatus": "Cancelled"}, "timerStatus is 'Cancelled'", id="cancelled"),
        pytest.param({"attempts": 3}, "attempts is 3", id="attempts"),
        pytest.param({"firedAt": format_instant(NOW)}, "firedAt is set", id="fired"),
        pytest.param({"lastError": "HTTP 500"}, "lastError is set", id="last-error"),
        pytest.param({"dueAt": format_instant(NOW)}, "dueAt differs from expiryTime", id="early-due"),
        pytest.param(
            {"timerStatus": "Failed", "attempts": 8, "lastError": "gave up"},
            "timerStatus is 'Failed', attempts is 8, lastError is set",
            id="all-at-once",
        ),
    ],
)
def test_a_record_of_a_timer_past_new_is_refused_naming_the_fields(changes: dict[str, Any], fault: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode(value(record(**changes)))
    assert str(info.value).startswith(f"create record is not a new timer: {fault}; expected timerStatus Scheduled")


def test_lease_fields_are_never_taken_from_a_record() -> None:
    message = decode(value(record(leaseOwner="intruder", leaseUntil=format_instant(EXPIRY + timedelta(days=9)))))
    assert message.timer is not None
    assert (message.timer.lease_owner, message.timer.lease_until) == (None, None)


# --- through the consumer, on a real broker ------------------------------------------------------------------


@contextmanager
def consumer_thread(settings: Settings, store: SqliteStore) -> Iterator[None]:
    flag = StopFlag()
    codes: list[int] = []
    group = f"g-{uuid.uuid4().hex[:8]}"
    thread = threading.Thread(
        target=lambda: codes.append(serve(settings, flag, store, group_id=group, max_poll_interval_ms=6000))
    )
    thread.start()
    try:
        yield
    finally:
        flag.request()
        thread.join(30)
    assert not thread.is_alive() and codes == [0]


def test_the_consumer_dead_letters_a_foreign_running_create_and_stores_the_rest(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: str
) -> None:
    settings = Settings(db=str(tmp_path / "timers.db"), kafka_bootstrap=kafka_bootstrap, topic=kafka_topic)
    good = Timer("good", "https://hooks.example.com/g", EXPIRY, NOW)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        producer.send(kafka_topic, key=b"foreign", value=value(record("foreign", timerStatus="Running")), partition=0)
        producer.send(kafka_topic, key=b"good", value=encode_create(good), partition=0)
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)
    store = SqliteStore(settings.db_path)
    try:
        with consumer_thread(settings, store):
            wait_for(lambda: store.get("good") is not None, 20, "the create after the foreign one")
        assert store.get("good") == good
        assert store.get("foreign") is None
    finally:
        store.close()
    [letter] = read_topic(kafka_bootstrap, dlq_topic(kafka_topic), 1, partitions=1)
    reason = json.loads(letter.value)["reason"]
    assert reason.startswith("create record is not a new timer: timerStatus is 'Running'")
    assert dict(letter.headers)[DLQ_REASON_HEADER].decode() == reason

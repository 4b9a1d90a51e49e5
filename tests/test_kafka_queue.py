"""KafkaQueue and the wire format (``queue/kafka.py``): pure encode/decode cases, the rules that a create record
describes a new timer and a change record a changed one, then submits against a real broker.

Before that rule a foreign producer's ``"timerStatus": "Running"`` was stored as Running with no lease and
never fired. What the consumer does with a refused record is in ``test_consumer.py``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from tests.factories import make_timer
from tests.fixtures_kafka import TansuBroker, read_topic
from tests.polling import free_port
from timerctl import changes
from timerctl.changes import Update
from timerctl.model import BackendUnavailable, InvalidInput, Status, Timer, format_instant, utc
from timerctl.queue.kafka import (
    MAX_DEAD_LETTER_VALUE,
    PRODUCER_CONFIG,
    KafkaQueue,
    Message,
    decode,
    dlq_topic,
    encode_cancel,
    encode_change,
    encode_create,
    encode_dead_letter,
)

NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)


#: ``order_timer(timer_id="t-1", **fields)``: created at NOW, expiring an hour later, with an order's payload.
order_timer = partial(
    make_timer, now=NOW, url="https://hooks.example.com/fire?x=1", payload={"order": 42, "note": "grüße"}
)


def value(timer: dict[str, Any]) -> bytes:
    """A create record (envelope version 1) carrying ``timer`` as its timer."""
    return json.dumps({"v": 1, "op": "create", "timer": timer}).encode()


def create_value(**timer_changes: Any) -> bytes:
    """A create record of ``order_timer()`` with ``timer_changes`` made to its record."""
    return value(order_timer().to_record() | timer_changes)


def failed_timer(timer_id: str = "t-1") -> Timer:
    """``order_timer`` as a runner leaves it after its last attempt failed."""
    fired = NOW + timedelta(hours=1)
    return order_timer(
        timer_id,
        status=Status.FAILED,
        attempts=8,
        fired_at=fired,
        last_error="HTTP 500",
        due_at=fired,
        ended_at=fired + timedelta(minutes=9),
        delivery_count=8,
    )


#: Each change op with the timer it carries: what ``changes`` makes of a new (or, to retry, a Failed) timer.
CHANGED: dict[str, Timer] = {
    "update": changes.update(order_timer(), Update(expiry_time=NOW + timedelta(hours=2), payload={"order": 43})),
    "fire": changes.fire_now(order_timer(), NOW),
    "retry": changes.retry(failed_timer(), NOW + timedelta(minutes=5)),
}


def change_value(op: str, **timer_changes: Any) -> bytes:
    """An ``op`` record of ``CHANGED[op]`` with ``timer_changes`` made to its record."""
    return json.dumps({"v": 1, "op": op, "timerId": "t-1", "timer": CHANGED[op].to_record() | timer_changes}).encode()


def without(record: bytes, field: str) -> bytes:
    """``record`` without its envelope field ``field``."""
    data = json.loads(record)
    del data[field]
    return json.dumps(data).encode()


# --- wire format -------------------------------------------------------------------------------------


def test_create_round_trips() -> None:
    timer = order_timer()
    value = encode_create(timer)
    assert json.loads(value)["v"] == 1 and json.loads(value)["op"] == "create"
    assert decode(value) == Message("create", "t-1", timer)


def test_cancel_round_trips() -> None:
    value = encode_cancel("t-9")
    assert json.loads(value) == {"v": 1, "op": "cancel", "timerId": "t-9"}
    assert decode(value) == Message("cancel", "t-9")


def test_encode_cancel_rejects_a_bad_id() -> None:
    with pytest.raises(InvalidInput, match="invalid timer id"):
        encode_cancel("no spaces allowed")


@pytest.mark.parametrize("op", sorted(CHANGED))
def test_change_round_trips_with_the_whole_changed_timer(op: str) -> None:
    timer = CHANGED[op]
    value = encode_change(op, timer)
    assert json.loads(value) == {"v": 1, "op": op, "timerId": "t-1", "timer": timer.to_record()}
    assert json.loads(value)["timer"]["revision"] == 1
    assert decode(value) == Message(op, "t-1", timer)  # type: ignore[arg-type]  # op is one of the change ops


def test_the_change_record_format_is_pinned() -> None:
    """The bytes other producers and readers rely on (README, "The Kafka record format")."""
    timer = make_timer("t-7", NOW, url="https://hooks.example.com/x", created_at=NOW - timedelta(hours=1))
    fired = changes.fire_now(timer, NOW - timedelta(minutes=1))
    assert encode_change("fire", fired) == (
        b'{"v":1,"op":"fire","timerId":"t-7","timer":{"timerId":"t-7","webhookUrl":"https://hooks.example.com/x",'
        b'"expiryTime":"2026-11-25T17:00:00.000Z","createdAt":"2026-11-25T16:00:00.000Z","timerStatus":"Scheduled",'
        b'"payload":null,"attempts":0,"firedAt":null,"lastError":null,"nextAttemptAt":"2026-11-25T16:59:00.000Z",'
        b'"endedAt":null,"deliveryCount":0,"onFailureUrl":null,"dueAt":"2026-11-25T16:59:00.000Z","revision":1}}'
    )


def test_encode_change_refuses_an_op_that_is_not_a_change() -> None:
    for op in ("create", "cancel", "delete"):
        with pytest.raises(ValueError, match=f"unknown change op '{op}'; expected update, retry or fire"):
            encode_change(op, CHANGED["update"])


def test_records_written_before_changes_existed_read_as_they_did() -> None:
    """Version 1 only grows: a create and a cancel exactly as earlier releases wrote them still decode."""
    create = (
        b'{"v":1,"op":"create","timer":{"timerId":"t-1","webhookUrl":"https://hooks.example.com/fire?x=1",'
        b'"expiryTime":"2026-11-25T18:00:00.000Z","createdAt":"2026-11-25T17:00:00.000Z","timerStatus":"Scheduled",'
        b'"payload":{"order":42,"note":"gr\xc3\xbc\xc3\x9fe"},"attempts":0,"firedAt":null,"lastError":null,'
        b'"dueAt":"2026-11-25T18:00:00.000Z"}}'
    )
    assert decode(create) == Message("create", "t-1", order_timer())
    assert decode(b'{"v":1,"op":"cancel","timerId":"t-1"}') == Message("cancel", "t-1")


def test_decode_ignores_unknown_envelope_fields() -> None:
    value = json.dumps({"v": 1, "op": "cancel", "timerId": "a", "traceId": "x"}).encode()
    assert decode(value) == Message("cancel", "a")


MALFORMED: list[tuple[str, bytes | None, str]] = [
    ("null value", None, "no value"),
    ("not UTF-8", b'{"v": 1, "op": "cancel", "timerId": "\xff"}', "not UTF-8"),
    ("not JSON", b"{v: 1", "not JSON"),
    ("empty", b"", "not JSON"),
    ("array", b"[1, 2]", "must be a JSON object, got a JSON array"),
    ("string", b'"create"', "got a JSON string"),
    ("number", b"1", "got a JSON number"),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("lone surrogate", create_value(webhookUrl="https://a.example/\ud800"), "surrogate"),
    ("no version", b'{"op": "cancel", "timerId": "a"}', 'no version field "v"'),
    ("version 2", b'{"v": 2, "op": "cancel", "timerId": "a"}', "unsupported record version 2"),
    ("version as text", b'{"v": "1", "op": "cancel", "timerId": "a"}', "unsupported record version '1'"),
    ("version true", b'{"v": true, "op": "cancel", "timerId": "a"}', "unsupported record version True"),
    ("version 1.0", b'{"v": 1.0, "op": "cancel", "timerId": "a"}', "unsupported record version 1.0"),
    ("no op", b'{"v": 1, "timerId": "a"}', "unknown op None"),
    (
        "unknown op",
        b'{"v": 1, "op": "delete", "timerId": "a"}',
        'unknown op \'delete\'; expected one of "create", "cancel", "update", "retry", "fire"',
    ),
    ("op an array", b'{"v": 1, "op": ["update"], "timerId": "a"}', "unknown op ['update']"),
    ("op an object", b'{"v": 1, "op": {}, "timerId": "a"}', "unknown op {}"),
    ("op in capitals", change_value("update").replace(b'"update"', b'"Update"'), "unknown op 'Update'"),
    ("create without timer", b'{"v": 1, "op": "create"}', 'no "timer"'),
    ("timer not an object", b'{"v": 1, "op": "create", "timer": [1]}', "must be a JSON object, got list"),
    ("timer without url", create_value(webhookUrl=None), "invalid timer: webhook URL is empty"),
    ("timer missing a field", json.dumps({"v": 1, "op": "create", "timer": {"timerId": "a"}}).encode(), "missing"),
    ("timer with ftp url", create_value(webhookUrl="ftp://x.example/"), "must start with http"),
    ("timer with bad id", create_value(timerId="a b"), "invalid timer id"),
    ("timer with bad expiry", create_value(expiryTime="tomorrow"), "invalid instant 'tomorrow'"),
    ("timer with naive expiry", create_value(expiryTime="2026-11-25T18:00:00"), "has no offset"),
    ("timer with bad status", create_value(timerStatus="Sleeping"), "bad value"),
    ("timer with negative attempts", create_value(attempts=-1), "attempts must be a non-negative integer"),
    ("timer with NaN payload", create_value(payload=float("nan")), "payload is not JSON-serialisable"),
    ("timer with huge payload", create_value(payload="x" * 70_000), "64 KiB"),
    ("cancel without id", b'{"v": 1, "op": "cancel"}', 'no "timerId"'),
    ("cancel with bad id", b'{"v": 1, "op": "cancel", "timerId": 7}', "invalid timerId"),
    ("update without timer", without(change_value("update"), "timer"), 'update record has no "timer" object'),
    ("fire without timerId", without(change_value("fire"), "timerId"), 'fire record has no "timerId"'),
    (
        "retry with bad timerId",
        change_value("retry").replace(b'"timerId": "t-1", "timer"', b'"timerId": 7, "timer"'),
        "retry record has an invalid timerId: invalid timer id 7",
    ),
    (
        "update with ftp url",
        change_value("update", webhookUrl="ftp://x.example/"),
        "update record has an invalid timer: webhook URL 'ftp://x.example/' must start with http",
    ),
    ("fire timer not an object", b'{"v": 1, "op": "fire", "timerId": "a", "timer": "a"}', "must be a JSON object"),
    (
        "update of another timer",
        change_value("update", timerId="t-2"),
        "update record's timerId 't-1' differs from its timer's 't-2'",
    ),
    ("retry with bad revision", change_value("retry", revision=-1), "revision must be a non-negative integer"),
]


@pytest.mark.parametrize(("value", "reason"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_decode_names_what_is_malformed(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode(value)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_dead_letter_keeps_text_or_base64_and_cuts_huge_values() -> None:
    letter = json.loads(encode_dead_letter("bad", "t", 2, 17, b"not json"))
    assert letter == {"reason": "bad", "topic": "t", "partition": 2, "offset": 17, "value": "not json"}
    binary = json.loads(encode_dead_letter("bad", "t", 0, 0, b"\xff\x00"))
    assert base64.b64decode(binary["valueBase64"]) == b"\xff\x00" and "value" not in binary
    huge = json.loads(encode_dead_letter("bad", "t", 0, 0, b"x" * (MAX_DEAD_LETTER_VALUE + 10)))
    assert huge["truncated"] is True and huge["size"] == MAX_DEAD_LETTER_VALUE + 10
    assert len(huge["value"]) == MAX_DEAD_LETTER_VALUE
    assert dlq_topic("timers") == "timers.dlq"


# --- a create record must describe a new timer ----------------------------------------------------------

MADE = utc(datetime.now(UTC))
EXPIRY = MADE + timedelta(hours=1)


def record(timer_id: str = "t-1", **changes: Any) -> dict[str, Any]:
    """The record of a new timer made at MADE (due at EXPIRY), with ``changes``."""
    return make_timer(timer_id, now=MADE, url="https://hooks.example.com/x", payload={"k": 1}).to_record() | changes


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
    assert message.timer == make_timer("t-1", now=MADE, url="https://hooks.example.com/x")


@pytest.mark.parametrize(
    ("changes", "fault"),
    [
        pytest.param({"timerStatus": "Running"}, "timerStatus is 'Running'", id="running"),
        pytest.param({"timerStatus": "Finished"}, "timerStatus is 'Finished'", id="finished"),
        pytest.param({"timerStatus": "Cancelled"}, "timerStatus is 'Cancelled'", id="cancelled"),
        pytest.param({"attempts": 3}, "attempts is 3", id="attempts"),
        pytest.param({"firedAt": format_instant(MADE)}, "firedAt is set", id="fired"),
        pytest.param({"lastError": "HTTP 500"}, "lastError is set", id="last-error"),
        pytest.param({"dueAt": format_instant(MADE)}, "dueAt differs from expiryTime", id="early-due"),
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


@pytest.mark.parametrize(
    ("fields", "fault"),
    [
        pytest.param({"revision": 1}, "revision is 1", id="revision"),
        pytest.param({"deliveryCount": 3}, "deliveryCount is 3", id="delivery-count"),
        pytest.param({"endedAt": format_instant(MADE)}, "endedAt is set", id="ended"),
        pytest.param(
            {"timerStatus": "Retrying", "revision": 2}, "timerStatus is 'Retrying', revision is 2", id="retrying"
        ),
    ],
)
def test_a_create_carrying_lifecycle_state_is_refused(fields: dict[str, Any], fault: str) -> None:
    """Stored first (first write wins), a create at revision 2 would make the timer's first two changes look old."""
    with pytest.raises(InvalidInput) as info:
        decode(value(record(**fields)))
    assert str(info.value).startswith(f"create record is not a new timer: {fault}; expected timerStatus Scheduled")


def test_a_change_of_a_retrying_timer_is_accepted() -> None:
    retrying = order_timer(status=Status.RETRYING, attempts=2, fired_at=NOW, last_error="HTTP 503", delivery_count=2)
    for op, timer in [
        ("update", changes.update(retrying, Update(payload={"order": 44}))),
        ("fire", changes.fire_now(retrying, NOW)),
    ]:
        assert decode(encode_change(op, timer)) == Message(op, "t-1", timer)  # type: ignore[arg-type]


#: What a change record of each op must carry, as its refusal says (then "revision 1 or more, no endedAt").
EXPECTED_CHANGED = {
    "update": "timerStatus Scheduled or Retrying",
    "fire": "timerStatus Scheduled or Retrying",
    "retry": "timerStatus Scheduled, attempts 0, no firedAt",
}


@pytest.mark.parametrize(
    ("op", "fields", "fault"),
    [
        pytest.param("update", {"revision": 0}, "revision is 0", id="update-revision-0"),
        pytest.param("fire", {"revision": 0}, "revision is 0", id="fire-revision-0"),
        pytest.param("update", {"timerStatus": "Running"}, "timerStatus is 'Running'", id="update-running"),
        pytest.param("update", {"timerStatus": "Finished"}, "timerStatus is 'Finished'", id="update-finished"),
        pytest.param(
            "fire",
            {"timerStatus": "Cancelled", "endedAt": format_instant(NOW)},
            "timerStatus is 'Cancelled', endedAt is set",
            id="fire-cancelled",
        ),
        pytest.param("retry", {"timerStatus": "Failed"}, "timerStatus is 'Failed'", id="retry-still-failed"),
        pytest.param("retry", {"timerStatus": "Retrying"}, "timerStatus is 'Retrying'", id="retry-retrying"),
        pytest.param("retry", {"attempts": 3}, "attempts is 3", id="retry-attempts"),
        pytest.param(
            "retry", {"firedAt": format_instant(NOW), "revision": 0}, "revision is 0, firedAt is set", id="retry-fired"
        ),
    ],
)
def test_a_change_record_of_a_timer_the_op_cannot_produce_is_refused_naming_the_fields(
    op: str, fields: dict[str, Any], fault: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        decode(change_value(op, **fields))
    assert str(info.value) == (
        f"{op} record is not a changed timer: {fault}; expected {EXPECTED_CHANGED[op]}, revision 1 or more, no endedAt"
    )


def test_lease_fields_are_never_taken_from_a_record() -> None:
    lease = {"leaseOwner": "intruder", "leaseUntil": format_instant(EXPIRY + timedelta(days=9))}
    for message in (decode(value(record(**lease))), decode(change_value("update", **lease))):
        assert message.timer is not None
        assert (message.timer.lease_owner, message.timer.lease_until) == (None, None)


# --- against the broker -------------------------------------------------------------------------------


def test_submit_publishes_keyed_records_acknowledged_by_all(kafka_bootstrap: str, kafka_topic: str) -> None:
    queue = KafkaQueue(kafka_bootstrap, kafka_topic)
    timers = [order_timer(f"sub-{i}", payload={"i": i}) for i in range(50)]
    try:
        queue.submit(timers)
        queue.submit_cancel("sub-7")
        assert PRODUCER_CONFIG["acks"] == "all"  # every in-sync replica
    finally:
        queue.close()
    records = read_topic(kafka_bootstrap, kafka_topic, 51)
    assert len(records) == 51
    by_id = {r.key.decode(): r for r in records if decode(r.value).op == "create"}
    assert set(by_id) == {t.timer_id for t in timers}
    for timer in timers:
        record = by_id[timer.timer_id]
        assert record.key == timer.timer_id.encode()
        assert record.value == encode_create(timer)
    [cancel] = [r for r in records if decode(r.value).op == "cancel"]
    assert cancel.key == b"sub-7" and decode(cancel.value) == Message("cancel", "sub-7")
    # Same key, same partition, create first: the consumer sees them in order.
    assert cancel.partition == by_id["sub-7"].partition and cancel.offset > by_id["sub-7"].offset


def test_changes_are_published_keyed_after_the_create_on_its_partition(kafka_bootstrap: str, kafka_topic: str) -> None:
    timer = order_timer("ch-1")
    updated = changes.update(timer, Update(webhook_url="https://hooks.example.com/moved"))
    fired = changes.fire_now(updated, NOW)
    queue = KafkaQueue(kafka_bootstrap, kafka_topic)
    try:
        queue.submit([timer])
        queue.submit_change("update", updated)
        queue.submit_change("fire", fired)
    finally:
        queue.close()
    records = sorted(read_topic(kafka_bootstrap, kafka_topic, 3), key=lambda r: r.offset)
    assert {r.key for r in records} == {b"ch-1"}
    assert len({r.partition for r in records}) == 1
    assert [decode(r.value) for r in records] == [
        Message("create", "ch-1", timer),
        Message("update", "ch-1", updated),
        Message("fire", "ch-1", fired),
    ]


def test_submit_of_nothing_does_not_connect() -> None:
    queue = KafkaQueue(f"127.0.0.1:{free_port()}", "timers")
    queue.submit([])
    assert queue._producer is None


def test_ping_answers_when_the_broker_is_up(kafka_bootstrap: str, kafka_topic: str) -> None:
    queue = KafkaQueue(kafka_bootstrap, kafka_topic)
    try:
        queue.ping()
    finally:
        queue.close()


def test_unreachable_broker_is_backend_unavailable_within_10s() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    calls: list[Callable[[KafkaQueue], object]] = [lambda q: q.submit([order_timer()]), lambda q: q.ping()]
    for call in calls:
        queue = KafkaQueue(bootstrap, "timers")
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            call(queue)
        assert time.monotonic() - started < 10
        message = str(caught.value)
        assert bootstrap in message and "\n" not in message
        assert caught.value.exit_code == 3
        queue.close()


def test_broker_lost_after_connecting_is_backend_unavailable_within_10s(private_kafka_broker: TansuBroker) -> None:
    queue = KafkaQueue(private_kafka_broker.bootstrap, "lost")
    try:
        queue.submit([order_timer("before")])
        private_kafka_broker.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=private_kafka_broker.bootstrap):
            queue.submit([order_timer("after")])
        assert time.monotonic() - started < 10
    finally:
        queue.close()


def test_a_create_of_a_timer_past_scheduled_is_refused() -> None:
    """A create record must describe a new timer (rule in timerctl/queue/kafka.py; its cases below)."""
    timer = order_timer(status=Status.RUNNING, attempts=2, last_error="HTTP 503")
    with pytest.raises(
        InvalidInput, match="not a new timer: timerStatus is 'Running', attempts is 2, lastError is set"
    ):
        decode(encode_create(timer))

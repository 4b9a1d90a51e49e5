"""KafkaQueue and the wire format (``queue/kafka.py``): pure encode/decode cases, the rule that a create record
describes a new timer, then submits against a real broker.

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
from timerctl.model import BackendUnavailable, InvalidInput, Status, format_instant, utc
from timerctl.queue.kafka import (
    MAX_DEAD_LETTER_VALUE,
    PRODUCER_CONFIG,
    KafkaQueue,
    Message,
    decode,
    dlq_topic,
    encode_cancel,
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
    ("unknown op", b'{"v": 1, "op": "delete", "timerId": "a"}', "unknown op 'delete'"),
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


def test_lease_fields_are_never_taken_from_a_record() -> None:
    message = decode(value(record(leaseOwner="intruder", leaseUntil=format_instant(EXPIRY + timedelta(days=9)))))
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

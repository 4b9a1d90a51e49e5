"""The Kafka path: creates, changes and cancels are records on a topic, applied to the store by the consumer.

The wire format lives here and nowhere else. Each record is keyed by the timer id, so everything done to
one timer lands on one partition, after its create, in order. The value is compact UTF-8 JSON::

    {"v": 1, "op": "create", "timer": <Timer.to_record()>}
    {"v": 1, "op": "cancel", "timerId": "<id>"}
    {"v": 1, "op": "update" | "retry" | "fire", "timerId": "<id>", "timer": <to_record() as changed>}

Version 1 only grows: an op or field is added only so that every record written before reads as it did
(unknown envelope and timer fields are ignored). A record the consumer cannot decode (an unknown op
included) goes to ``<topic>.dlq`` with its original key and value and the reason (``encode_dead_letter``),
so one bad record never blocks the partition behind it.

A create record must describe a new timer, since nothing but a runner's claim or a person's change may
move one on: its ``timerStatus`` is ``Scheduled``, ``attempts``, ``revision`` and ``deliveryCount`` 0,
``firedAt``, ``lastError`` and ``endedAt`` null and ``dueAt`` equal to ``expiryTime`` (each may be absent,
as in records written before revisions existed). Anything else, such as a foreign producer's
``"timerStatus": "Running"`` that would be stored and never fire, or a ``revision`` that would make the
timer's real changes look old, is dead-lettered with the fields at fault as its reason.

A change record carries the timer as stored after the change, ``revision`` included; the consumer keeps
whichever of the stored timer and the record's is the later revision. Its timer must be one the op
produces: ``revision`` 1 or more, no ``endedAt``, ``timerStatus`` Scheduled or Retrying (a retry: Scheduled
with ``attempts`` 0 and no ``firedAt``), and ``timerId`` the id of that timer. Lease fields are never
taken from a record (a claim is the store's).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import Message as KafkaMessage

from timerctl.model import BackendUnavailable, InvalidInput, Status, Timer, validate_timer_id
from timerctl.redaction import one_line

WIRE_VERSION = 1
DLQ_SUFFIX = ".dlq"
#: How much of an undecodable value its dead letter keeps (base64 makes it up to 4/3 larger).
MAX_DEAD_LETTER_VALUE = 256 * 1024
#: Header carrying why a record was dead-lettered (the same text as the value's ``reason``).
DLQ_REASON_HEADER = "timerctl-reason"

# Records are produced with librdkafka (confluent-kafka): one create is acknowledged in ~5 ms after a
# ~40 ms import, and a bulk import sends >200,000 records/s, where kafka-python's pure-Python send path
# costs ~150 us per record and its import ~80 ms. Consumers stay on kafka-python (its groups hold on
# Tansu). murmur2 keeps kafka-python's and the Java client's key -> partition mapping. Bounded so a
# broker that does not answer is reported within 10 s: at once when every broker refuses connections,
# else after a connection setup timeout of 2 s or a delivery timeout of 8 s.
PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "partitioner": "murmur2_random",
    "linger.ms": 5,
    "compression.type": "gzip",
    "message.max.bytes": 8 * 1024 * 1024,
    "socket.connection.setup.timeout.ms": 2000,
    "request.timeout.ms": 5000,
    "message.timeout.ms": 8000,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
    "log_level": 0,  # failures are reported through BackendUnavailable, not librdkafka's stderr log
}
#: Records sent per wait for acknowledgements by ``submit``, bounding what one failure leaves unreported.
SUBMIT_CHUNK = 50_000
#: Seconds a publish waits for acknowledgements before giving up (beyond ``message.timeout.ms``).
FLUSH_TIMEOUT = 9.0
PING_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0

# A JSON escape of a UTF-16 surrogate: may decode to a lone surrogate no store can encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


#: What a record does: announce a timer, cancel it, or carry a change already stored.
Op = Literal["create", "cancel", "update", "retry", "fire"]
#: The ops whose record carries the timer as changed.
CHANGE_OPS: frozenset[str] = frozenset({"update", "retry", "fire"})
_OPS = ", ".join(f'"{op}"' for op in get_args(Op))


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded record: ``timer_id`` and, for a create or a change, the ``timer`` it carries."""

    op: Op
    timer_id: str
    timer: Timer | None = None


def dlq_topic(topic: str) -> str:
    """The dead-letter topic for ``topic``."""
    return topic + DLQ_SUFFIX


def record_key(timer_id: str) -> bytes:
    """The record key of a timer: its id, so its create, changes and cancel share a partition."""
    return timer_id.encode()


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_create(timer: Timer) -> bytes:
    """The record value announcing ``timer``."""
    return _dumps({"v": WIRE_VERSION, "op": "create", "timer": timer.to_record()})


def encode_cancel(timer_id: str) -> bytes:
    """The record value cancelling the timer ``timer_id``."""
    return _dumps({"v": WIRE_VERSION, "op": "cancel", "timerId": validate_timer_id(timer_id)})


def encode_change(op: str, timer: Timer) -> bytes:
    """The record value carrying ``timer`` as changed by ``op`` (update, retry or fire); ValueError for another op."""
    if op not in CHANGE_OPS:
        raise ValueError(f"unknown change op {op!r}; expected update, retry or fire")
    return _dumps({"v": WIRE_VERSION, "op": op, "timerId": timer.timer_id, "timer": timer.to_record()})


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _check_new(timer: Timer) -> None:
    """InvalidInput naming every field by which a create record's ``timer`` is not a new timer."""
    wrong = []
    if timer.status is not Status.SCHEDULED:
        wrong.append(f"timerStatus is {timer.status.value!r}")
    if timer.attempts:
        wrong.append(f"attempts is {timer.attempts}")
    if timer.fired_at is not None:
        wrong.append("firedAt is set")
    if timer.last_error is not None:
        wrong.append("lastError is set")
    if timer.due_at != timer.expiry_time:
        wrong.append("dueAt differs from expiryTime")
    if timer.revision:
        wrong.append(f"revision is {timer.revision}")
    if timer.delivery_count:
        wrong.append(f"deliveryCount is {timer.delivery_count}")
    if timer.ended_at is not None:
        wrong.append("endedAt is set")
    if wrong:
        raise InvalidInput(
            f"create record is not a new timer: {', '.join(wrong)}; expected timerStatus Scheduled, attempts, "
            "revision and deliveryCount 0, no firedAt, lastError or endedAt, dueAt equal to expiryTime "
            "(each may be left out)"
        )


def _check_changed(op: str, timer: Timer) -> None:
    """InvalidInput naming every field by which a change record's ``timer`` is not what ``op`` produces."""
    wrong = []
    allowed = (Status.SCHEDULED,) if op == "retry" else (Status.SCHEDULED, Status.RETRYING)
    if timer.status not in allowed:
        wrong.append(f"timerStatus is {timer.status.value!r}")
    if timer.revision < 1:
        wrong.append("revision is 0")
    if timer.ended_at is not None:
        wrong.append("endedAt is set")
    if op == "retry" and timer.attempts:
        wrong.append(f"attempts is {timer.attempts}")
    if op == "retry" and timer.fired_at is not None:
        wrong.append("firedAt is set")
    if wrong:
        expected = (
            "timerStatus Scheduled, attempts 0, no firedAt" if op == "retry" else "timerStatus Scheduled or Retrying"
        )
        raise InvalidInput(
            f"{op} record is not a changed timer: {', '.join(wrong)}; expected {expected}, revision 1 or more, "
            "no endedAt"
        )


def _timer_of(op: str, data: dict[str, Any]) -> Timer:
    if "timer" not in data:
        raise InvalidInput(f'{op} record has no "timer" object')
    try:
        return Timer.from_record(data["timer"])  # takes no lease fields, whatever the record holds
    except InvalidInput as exc:
        raise InvalidInput(f"{op} record has an invalid timer: {exc}") from exc


def _timer_id_of(op: str, data: dict[str, Any]) -> str:
    if "timerId" not in data:
        raise InvalidInput(f'{op} record has no "timerId"')
    try:
        return validate_timer_id(data["timerId"])
    except InvalidInput as exc:
        raise InvalidInput(f"{op} record has an invalid timerId: {exc}") from exc


def decode(value: bytes | None) -> Message:
    """The Message in a record value; InvalidInput saying precisely what is wrong with it."""
    if value is None:
        raise InvalidInput("record has no value (null); expected a JSON object")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"record value is not UTF-8: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"record value is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput("record value is JSON nested too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"record value must be a JSON object, got a JSON {_json_type(data)}")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput("record value contains an unpaired UTF-16 surrogate escape") from exc
    if "v" not in data:
        raise InvalidInput(f'record has no version field "v"; expected "v": {WIRE_VERSION}')
    version = data["v"]
    if type(version) is not int or version != WIRE_VERSION:
        raise InvalidInput(f"unsupported record version {version!r}; expected {WIRE_VERSION}")
    op = data.get("op")
    if op == "create":
        timer = _timer_of(op, data)
        _check_new(timer)
        return Message("create", timer.timer_id, timer)
    if op == "cancel":
        return Message("cancel", _timer_id_of(op, data))
    if isinstance(op, str) and op in CHANGE_OPS:  # a JSON array or object is unhashable
        timer = _timer_of(op, data)
        timer_id = _timer_id_of(op, data)
        if timer.timer_id != timer_id:
            raise InvalidInput(f"{op} record's timerId {timer_id!r} differs from its timer's {timer.timer_id!r}")
        _check_changed(op, timer)
        return Message(cast(Op, op), timer_id, timer)
    raise InvalidInput(f"unknown op {op!r}; expected one of {_OPS}")


def encode_dead_letter(reason: str, topic: str, partition: int, offset: int, value: bytes | None) -> bytes:
    """The dead-letter value for a record that could not be decoded: where it was, why, and its value.

    The original value is kept as text when it is UTF-8 (``value``), else base64 (``valueBase64``). One
    over ``MAX_DEAD_LETTER_VALUE`` bytes is cut there (``truncated``, ``size``), so that the letter itself
    always fits in a record and a huge bad record cannot stall the consumer.
    """
    letter: dict[str, Any] = {"reason": reason, "topic": topic, "partition": partition, "offset": offset}
    if value is None:
        letter["value"] = None
        return _dumps(letter)
    kept = value[:MAX_DEAD_LETTER_VALUE]
    if len(kept) < len(value):
        letter.update(truncated=True, size=len(value))
    try:
        letter["value"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        letter["valueBase64"] = base64.b64encode(kept).decode("ascii")
    return json.dumps(letter, separators=(",", ":"), ensure_ascii=True).encode()


def unavailable(bootstrap: str, cause: BaseException | str) -> BackendUnavailable:
    """The BackendUnavailable for a failed exchange with the broker at ``bootstrap``: one line."""
    reason = cause if isinstance(cause, str) else one_line(cause)
    return BackendUnavailable(f"Kafka at {bootstrap} is unavailable ({reason})")


#: Record headers as librdkafka takes them.
Headers = list[tuple[str, str | bytes | None]]


class RecordProducer:
    """Publishes records and returns once the broker acknowledged every one; safe to share across threads.

    Failures surface as BackendUnavailable: when every broker is down (reported by librdkafka as soon as
    the connections fail), when a record is refused, or when acknowledgements take longer than
    ``FLUSH_TIMEOUT``. Records still queued then are purged, so a failed publish never lands later.
    """

    def __init__(self, bootstrap: str, **overrides: Any) -> None:
        self.bootstrap = bootstrap
        self._down = threading.Event()
        self._producer = Producer(
            {**PRODUCER_CONFIG, **overrides, "bootstrap.servers": bootstrap, "error_cb": self._on_error}
        )

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down.set()

    def _failure(self, reason: str) -> BackendUnavailable:
        self._producer.purge()
        self._producer.poll(0)
        return unavailable(self.bootstrap, reason)

    def publish(self, topic: str, records: Iterable[tuple[bytes, bytes, Headers | None]]) -> None:
        """Send every (key, value, headers) to ``topic``; return once all are acknowledged."""
        self._down.clear()
        deadline = time.monotonic() + FLUSH_TIMEOUT
        errors: list[KafkaError] = []
        acked: list[None] = []

        def delivered(error: KafkaError | None, _message: KafkaMessage) -> None:
            if error is None:
                acked.append(None)
            else:
                errors.append(error)

        sent = 0
        for key, value, headers in records:
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: serve callbacks until it drains
                    self._wait(0.05, deadline, errors)
                except KafkaException as exc:
                    raise self._failure(exc.args[0].str()) from exc
            sent += 1
        while len(acked) < sent:
            self._wait(0.05, deadline, errors)

    def _wait(self, seconds: float, deadline: float, errors: list[KafkaError]) -> None:
        self._producer.poll(seconds)
        if errors:
            raise self._failure(errors[0].str())
        if self._down.is_set():
            raise self._failure("all brokers are down")
        if time.monotonic() > deadline:
            raise self._failure(f"no acknowledgement within {FLUSH_TIMEOUT:g} s")

    def ping(self, topic: str) -> None:
        """Raise BackendUnavailable unless the broker answers a metadata request for ``topic``."""
        self._down.clear()
        deadline = time.monotonic() + PING_TIMEOUT
        while True:  # short metadata waits, so refused connections are reported at once
            try:
                self._producer.list_topics(topic, timeout=0.25)
                return
            except KafkaException as exc:
                self._producer.poll(0)  # serves error_cb
                if self._down.is_set() or time.monotonic() > deadline:
                    raise self._failure(exc.args[0].str()) from exc

    def close(self) -> None:
        """Wait briefly for records another thread may still be sending; unacknowledged ones were reported."""
        self._producer.flush(CLOSE_TIMEOUT)


class KafkaQueue:
    """Queue publishing creates, changes and cancels to ``topic``; the consumer daemon writes them to the store."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: RecordProducer | None = None
        self._lock = threading.Lock()

    def _connect(self) -> RecordProducer:
        with self._lock:
            if self._producer is None:
                self._producer = RecordProducer(self.bootstrap)
            return self._producer

    def _publish(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Send every (key, value) and return once the broker acknowledged all of them."""
        self._connect().publish(self.topic, ((key, value, None) for key, value in records))

    def submit(self, timers: Sequence[Timer]) -> None:
        """Return once every create record is acknowledged by all in-sync replicas.

        On BackendUnavailable the records of earlier chunks (and some of the failed one) may already be
        published; submitting them again is harmless, as the consumer keeps the first write of an id.
        """
        # Chunked: a publish waits at most FLUSH_TIMEOUT for its acknowledgements, so one huge
        # send-then-wait could fail on a healthy but merely busy broker.
        for start in range(0, len(timers), SUBMIT_CHUNK):
            chunk = timers[start : start + SUBMIT_CHUNK]
            self._publish((record_key(t.timer_id), encode_create(t)) for t in chunk)

    def submit_one(self, timer: Timer) -> tuple[Timer, bool]:
        """``(timer, True)`` once its create record is acknowledged: only the consumer knows if it was new."""
        self.submit([timer])
        return timer, True

    def submit_cancel(self, timer_id: str) -> None:
        """Publish a cancel after the timer's create (same key, same partition); returns once acknowledged."""
        self._publish([(record_key(timer_id), encode_cancel(timer_id))])

    def submit_change(self, op: str, timer: Timer) -> None:
        """Publish a stored change after the timer's create (same key, same partition); returns once acknowledged."""
        self._publish([(record_key(timer.timer_id), encode_change(op, timer))])

    def ping(self) -> None:
        """Raise BackendUnavailable unless the broker answers a metadata request for the topic."""
        self._connect().ping(self.topic)

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close()

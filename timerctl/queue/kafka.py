"""The Kafka path: creates and cancels are records on a topic, applied to the store by the consumer.

The wire format lives here and nowhere else. Each record is keyed by the timer id, so a timer's create
and its cancel land on the same partition, in order. The value is compact UTF-8 JSON::

    {"v": 1, "op": "create", "timer": <Timer.to_record()>}
    {"v": 1, "op": "cancel", "timerId": "<id>"}

A record the consumer cannot decode goes to ``<topic>.dlq`` with its original key and value and the
reason (``encode_dead_letter``), so one bad record never blocks the partition behind it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kafka import KafkaProducer
from kafka.errors import KafkaError

from timerctl.model import BackendUnavailable, InvalidInput, Timer, validate_timer_id

WIRE_VERSION = 1
DLQ_SUFFIX = ".dlq"
#: How much of an undecodable value its dead letter keeps (base64 makes it up to 4/3 larger).
MAX_DEAD_LETTER_VALUE = 256 * 1024
#: Header carrying why a record was dead-lettered (the same text as the value's ``reason``).
DLQ_REASON_HEADER = "timerctl-reason"

# Bounded so a broker that does not answer is reported within 10 s: 2 s when unreachable from the start,
# else a metadata wait of at most 5 s or a delivery timeout of 8 s. Batched so a bulk submit sends few
# large requests: with acks=all the round trips dominate otherwise.
PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 5,
    "batch_size": 1024 * 1024,
    "max_request_size": 8 * 1024 * 1024,
    # Pure-Python CRC-32C over uncompressed batches is most of kafka-python's send cost; gzip (C zlib,
    # off the GIL) shrinks what the checksum covers and roughly doubles bulk throughput.
    "compression_type": "gzip",
    "api_version_auto_timeout_ms": 2000,
    "max_block_ms": 5000,
    "request_timeout_ms": 5000,
    "delivery_timeout_ms": 8000,
    "reconnect_backoff_ms": 100,
    "reconnect_backoff_max_ms": 1000,
}
#: Records sent per flush by ``submit``: about a second of producer work, far inside delivery_timeout_ms.
SUBMIT_CHUNK = 10_000
#: Seconds ``submit`` waits for acknowledgements before giving up (beyond ``delivery_timeout_ms``).
FLUSH_TIMEOUT = 9.0
CLOSE_TIMEOUT = 2.0

# A JSON escape of a UTF-16 surrogate: may decode to a lone surrogate no store can encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded record: a create carrying ``timer``, or a cancel of ``timer_id``."""

    op: Literal["create", "cancel"]
    timer_id: str
    timer: Timer | None = None


def dlq_topic(topic: str) -> str:
    """The dead-letter topic for ``topic``."""
    return topic + DLQ_SUFFIX


def record_key(timer_id: str) -> bytes:
    """The record key of a timer: its id, so its create and cancel share a partition."""
    return timer_id.encode()


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_create(timer: Timer) -> bytes:
    """The record value announcing ``timer``."""
    return _dumps({"v": WIRE_VERSION, "op": "create", "timer": timer.to_record()})


def encode_cancel(timer_id: str) -> bytes:
    """The record value cancelling the timer ``timer_id``."""
    return _dumps({"v": WIRE_VERSION, "op": "cancel", "timerId": validate_timer_id(timer_id)})


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


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
        if "timer" not in data:
            raise InvalidInput('create record has no "timer" object')
        try:
            timer = Timer.from_record(data["timer"])
        except InvalidInput as exc:
            raise InvalidInput(f"create record has an invalid timer: {exc}") from exc
        return Message("create", timer.timer_id, timer)
    if op == "cancel":
        if "timerId" not in data:
            raise InvalidInput('cancel record has no "timerId"')
        try:
            timer_id = validate_timer_id(data["timerId"])
        except InvalidInput as exc:
            raise InvalidInput(f"cancel record has an invalid timerId: {exc}") from exc
        return Message("cancel", timer_id)
    raise InvalidInput(f'unknown op {op!r}; expected "create" or "cancel"')


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


def _one_line(exc: BaseException) -> str:
    name, text = type(exc).__name__, " ".join(str(exc).split())
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def unavailable(bootstrap: str, exc: BaseException) -> BackendUnavailable:
    """The BackendUnavailable for a failed exchange with the broker at ``bootstrap``: one line."""
    return BackendUnavailable(f"Kafka at {bootstrap} is unavailable ({_one_line(exc)})")


def new_producer(bootstrap: str, **overrides: Any) -> Any:
    """A connected KafkaProducer (acks=all, batched); BackendUnavailable within ~2 s when unreachable."""
    try:
        return KafkaProducer(bootstrap_servers=bootstrap.split(","), **{**PRODUCER_CONFIG, **overrides})
    except KafkaError as exc:
        raise unavailable(bootstrap, exc) from exc


class KafkaQueue:
    """Queue publishing creates and cancels to ``topic``; the consumer daemon writes them to the store."""

    direct = False

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = new_producer(self.bootstrap)
            return self._producer

    def _publish(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Send every (key, value) and return once the broker acknowledged all of them."""
        producer = self._connect()
        try:
            futures = [producer.send(self.topic, key=key, value=value) for key, value in records]
            producer.flush(timeout=FLUSH_TIMEOUT)
        except KafkaError as exc:
            raise unavailable(self.bootstrap, exc) from exc
        for future in futures:
            if future.failed():
                raise unavailable(self.bootstrap, future.exception)

    def submit(self, timers: Sequence[Timer]) -> list[Timer]:
        """The timers, once every create record is acknowledged by all in-sync replicas.

        On BackendUnavailable the records of earlier chunks (and some of the failed one) may already be
        published; submitting them again is harmless, as the consumer keeps the first write of an id.
        """
        # Chunked: a record still queued in the producer when delivery_timeout_ms has passed since it was
        # queued fails, so one huge send-then-flush would fail on a healthy but merely busy broker.
        for start in range(0, len(timers), SUBMIT_CHUNK):
            chunk = timers[start : start + SUBMIT_CHUNK]
            self._publish((record_key(t.timer_id), encode_create(t)) for t in chunk)
        return list(timers)

    def submit_cancel(self, timer_id: str) -> None:
        """Publish a cancel after the timer's create (same key, same partition); returns once acknowledged."""
        self._publish([(record_key(timer_id), encode_cancel(timer_id))])

    def ping(self) -> None:
        """Raise BackendUnavailable unless the broker answers a metadata request for the topic."""
        producer = self._connect()
        try:
            producer.partitions_for(self.topic)
        except KafkaError as exc:
            raise unavailable(self.bootstrap, exc) from exc

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            # Unacknowledged records were already reported by submit.
            with contextlib.suppress(KafkaError):
                producer.close(timeout=CLOSE_TIMEOUT)

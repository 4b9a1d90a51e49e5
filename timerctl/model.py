"""Timer, its statuses and the rules of its life — pure: no I/O and no clock reads.

Every function that needs "now" takes it as an argument, so the whole state machine is testable with
fixed instants and the same rules serve the CLI, the consumer and the runners.
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from timerctl.redaction import redact_url, scrub

MAX_URL_LENGTH = 2048
MAX_PAYLOAD_BYTES = 64 * 1024
#: The largest integer every store can hold (SQLite INTEGER and BSON int64 are signed 64-bit).
MAX_STORED_INT = 2**63 - 1
# ASCII and Unicode whitespace (U+00A0, U+2028, ...) and the C0/C1 control characters (U+0085, ...).
_URL_BAD_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")
TIMER_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
DEFAULT_HORIZON = timedelta(days=365)
_ZERO = timedelta(0)


class TimerError(Exception):
    """Base of the domain errors; each maps to one documented exit code."""

    exit_code = 1


class InvalidInput(TimerError):
    """The request is malformed or out of range (exit 2)."""

    exit_code = 2


class NotFound(TimerError):
    """No timer with that id (exit 1)."""

    exit_code = 1

    def __init__(self, timer_id: str) -> None:
        super().__init__(f"timer {timer_id} not found")
        self.timer_id = timer_id


class Conflict(TimerError):
    """The request contradicts the timer's current state (exit 4)."""

    exit_code = 4


class BackendUnavailable(TimerError):
    """A configured server (store, broker, cache) did not answer (exit 3)."""

    exit_code = 3


class Status(StrEnum):
    """What a timer is doing. A runner's claim is a lease, not a status: a claimed timer stays Scheduled
    (or Retrying) until its POST is committed to, so it can be cancelled or changed until then."""

    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    RETRYING = "Retrying"
    FINISHED = "Finished"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def is_pending(self) -> bool:
        return self in PENDING_STATUSES


FINAL_STATUSES = frozenset({Status.FINISHED, Status.FAILED, Status.CANCELLED})
#: Waiting for an attempt: what cancel, update and fire-now act on.
PENDING_STATUSES = frozenset({Status.SCHEDULED, Status.RETRYING})

#: The only moves a timer may make. Scheduled/Retrying → itself is a change (update, fire now); Running →
#: Scheduled/Retrying is a start handed back by a stopping runner; Running → Running is a lease taken over
#: from a runner that died mid-POST; Failed → Scheduled is a retry by hand.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.SCHEDULED: frozenset({Status.SCHEDULED, Status.RUNNING, Status.CANCELLED}),
    Status.RETRYING: frozenset({Status.RETRYING, Status.RUNNING, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.RUNNING, Status.SCHEDULED, Status.RETRYING, Status.FINISHED, Status.FAILED}),
    Status.FINISHED: frozenset(),
    Status.FAILED: frozenset({Status.SCHEDULED}),
    Status.CANCELLED: frozenset(),
}


def can_transition(src: Status, dst: Status) -> bool:
    """True when the state machine allows moving from ``src`` to ``dst``."""
    return dst in TRANSITIONS[src]


def parse_status(text: str) -> Status:
    """The Status named by ``text`` (case-insensitive), or InvalidInput naming the accepted values."""
    for status in Status:
        if status.value.lower() == text.strip().lower():
            return status
    accepted = ", ".join(s.value for s in Status)
    raise InvalidInput(f"unknown status {text!r}; expected one of {accepted}")


def utc(dt: datetime) -> datetime:
    """``dt`` in UTC truncated to milliseconds, the precision every store and the JSON form keep."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime reached the core; parse with an offset first")
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    extra = dt.microsecond % 1000
    return dt.replace(microsecond=dt.microsecond - extra) if extra else dt


def format_instant(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: ``2026-11-25T18:00:00.000Z``."""
    if dt.tzinfo is not UTC:
        dt = utc(dt)
    return _format_utc(dt)


@functools.lru_cache(maxsize=1024)
def _format_utc(dt: datetime) -> str:
    # Remembered: the timers of a bulk import created in the same millisecond share ``createdAt``.
    return dt.isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" sliced off: cheaper than a naive copy


def parse_instant(text: str) -> datetime:
    """A UTC datetime from the ``format_instant`` form (or any ISO-8601 with an offset)."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise InvalidInput(f"invalid instant {text!r}; expected ISO-8601 like 2026-11-25T18:00:00Z") from exc
    if dt.tzinfo is None:
        raise InvalidInput(f"instant {text!r} has no offset; add Z or +HH:MM")
    try:
        return utc(dt)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise InvalidInput(f"instant {text!r} is out of range in UTC") from exc


def validate_timer_id(timer_id: str) -> str:
    if not isinstance(timer_id, str) or not TIMER_ID_RE.fullmatch(timer_id):
        raise InvalidInput(f"invalid timer id {timer_id!r}; expected 1-128 characters from A-Z a-z 0-9 . _ : -")
    return timer_id


def validate_url(url: str) -> str:
    """The URL unchanged when it is an absolute http(s) URL a runner may POST to."""
    if type(url) is str and len(url) <= MAX_URL_LENGTH:
        # A bulk import repeats a few URLs many times; only accepted URLs are remembered.
        return _checked_url(url)
    return _check_url(url)


@functools.lru_cache(maxsize=256)
def _checked_url(url: str) -> str:
    return _check_url(url)


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidInput("webhook URL is empty; expected an absolute http(s) URL")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"webhook URL is {len(url)} characters; at most {MAX_URL_LENGTH} are accepted")
    if _URL_BAD_CHARS.search(url):
        raise InvalidInput(f"webhook URL {_shown(url)} contains whitespace or control characters")
    if not url.isascii():
        try:
            url.encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"webhook URL {_shown(url)} is not valid Unicode: {exc.reason}") from exc
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise InvalidInput(f"invalid webhook URL {_shown(url)}: {scrub(str(exc))}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"webhook URL {_shown(url)} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("webhook URL must not carry user:password credentials; put secrets in the payload")
    if not host:
        raise InvalidInput(f"webhook URL {_shown(url)} has no host")
    return url


def _shown(url: str) -> str:
    """The URL as an error message may echo it: no query string or credentials, at most 80 characters."""
    return repr(redact_url(url)[:80])


#: The longest payload text read and parsed at all (pretty-printed JSON may exceed 64 KiB; this may not).
MAX_PAYLOAD_TEXT_BYTES = 1024 * 1024


def encode_payload(payload: Any) -> str | None:
    """The payload as compact JSON text (None for no payload); InvalidInput when that is over 64 KiB.

    The one payload limit of every path (``--payload``, ``--from-file``, the API, Kafka records): it
    applies to this encoding, the form that is stored, cached, queued and POSTed.
    """
    if payload is None:
        return None
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())  # UnicodeEncodeError (a ValueError) on lone surrogates such as "\ud800"
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"payload is not JSON-serialisable: {exc}") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidInput(
            f"payload is {size} bytes as compact JSON, over {MAX_PAYLOAD_BYTES} bytes; "
            f"at most {MAX_PAYLOAD_BYTES} (64 KiB) are accepted"
        )
    return text


def parse_payload(text: str) -> Any:
    """A JSON value from the text of ``--payload``; InvalidInput naming the JSON error otherwise.

    Whitespace does not count: the 64 KiB limit is ``encode_payload``'s, on the compact form. Text over
    ``MAX_PAYLOAD_TEXT_BYTES`` is refused before it is parsed.
    """
    if len(text) > MAX_PAYLOAD_TEXT_BYTES or len(text.encode(errors="surrogateescape")) > MAX_PAYLOAD_TEXT_BYTES:
        raise InvalidInput(
            f"payload text is over {MAX_PAYLOAD_TEXT_BYTES} bytes (1 MiB); its compact JSON may be at most "
            f"{MAX_PAYLOAD_BYTES} (64 KiB)"
        )
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"payload is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput("payload is nested too deeply") from exc
    encode_payload(value)
    return value


def _canonical(payload: Any) -> str:
    """The payload as JSON with sorted keys: JSON objects are unordered, so key order is not a difference."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_delay(delay: timedelta, horizon: timedelta = DEFAULT_HORIZON) -> timedelta:
    """``delay`` unchanged when it is 0 or more and within the horizon; InvalidInput otherwise."""
    if delay < _ZERO:
        raise InvalidInput(f"delay {delay} is negative; expected 0s or more")
    if delay > horizon:
        raise InvalidInput(f"delay {delay} is beyond the horizon of {horizon}")
    return delay


def check_instant(at: datetime, now: datetime, horizon: timedelta = DEFAULT_HORIZON) -> datetime:
    """``at`` in UTC when it is now or later and within the horizon; InvalidInput otherwise."""
    at = utc(at)
    if at < utc(now):
        raise InvalidInput(f"instant {format_instant(at)} is in the past; expected now or later")
    if at - now > horizon:
        raise InvalidInput(f"instant {format_instant(at)} is beyond the horizon of {horizon}")
    return at


@dataclass(frozen=True, slots=True)
class TimerSpec:
    """What a client asked for; resolved against a clock into a Timer.

    Exactly one of ``expiry_time`` (an absolute instant) and ``delay`` (relative to creation) is set.
    Keeping the relative form lets a retried ``create --id X --in 90s`` be recognised as the same request.
    """

    webhook_url: str
    expiry_time: datetime | None = None
    delay: timedelta | None = None
    payload: Any = None
    timer_id: str | None = None
    on_failure_url: str | None = None

    def validate(self, now: datetime, horizon: timedelta = DEFAULT_HORIZON) -> None:
        validate_url(self.webhook_url)
        if self.timer_id is not None:
            validate_timer_id(self.timer_id)
        if self.on_failure_url is not None:
            validate_url(self.on_failure_url)
        encode_payload(self.payload)
        if (self.expiry_time is None) == (self.delay is None):
            raise InvalidInput("give exactly one of a delay (--in) or an instant (--at)")
        if self.delay is not None:
            check_delay(self.delay, horizon)
        if self.expiry_time is not None:
            check_instant(self.expiry_time, now, horizon)

    def resolve(self, now: datetime, horizon: timedelta = DEFAULT_HORIZON, new_id: str | None = None) -> Timer:
        """A new Scheduled timer for this spec created at ``now``; InvalidInput when the spec is bad."""
        self.validate(now, horizon)
        created = utc(now)
        expiry = utc(self.expiry_time) if self.expiry_time is not None else utc(created + (self.delay or timedelta()))
        return Timer(
            timer_id=self.timer_id or new_id or str(uuid.uuid4()),
            webhook_url=self.webhook_url,
            expiry_time=expiry,
            created_at=created,
            payload=self.payload,
            on_failure_url=self.on_failure_url,
        )

    def matches(self, timer: Timer) -> bool:
        """True when ``timer`` is what this spec would have created (the idempotent ``--id`` check)."""
        if timer.webhook_url != self.webhook_url or _canonical(timer.payload) != _canonical(self.payload):
            return False
        if timer.on_failure_url != self.on_failure_url:
            return False
        if self.delay is not None:
            return utc(timer.created_at + self.delay) == timer.expiry_time
        return self.expiry_time is not None and utc(self.expiry_time) == timer.expiry_time


#: Sentinel default of ``Timer.due_at``: replaced by ``expiry_time`` on construction.
_UNSET = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Timer:
    """One durable promise to POST ``payload`` to ``webhook_url`` at ``expiry_time``.

    ``due_at`` is when a runner should next act: the expiry at first, later the retry time (or now, after
    ``fire``). ``lease_owner``/``lease_until`` are the claim of the runner holding it; a claim does not
    change the status. ``revision`` counts changes made by people (update, cancel, retry, fire): a runner
    commits to a POST only of the revision it holds. ``delivery_count`` counts every attempt ever made
    (``attempts`` restarts at 0 on a retry by hand); the attempts themselves are ``Delivery`` records kept
    by the store.
    """

    timer_id: str
    webhook_url: str
    expiry_time: datetime
    created_at: datetime
    status: Status = Status.SCHEDULED
    payload: Any = None
    attempts: int = 0
    fired_at: datetime | None = None
    last_error: str | None = None
    due_at: datetime = _UNSET
    lease_owner: str | None = None
    lease_until: datetime | None = None
    revision: int = 0
    ended_at: datetime | None = None
    delivery_count: int = 0
    on_failure_url: str | None = None

    def __post_init__(self) -> None:
        if self.due_at is _UNSET:
            object.__setattr__(self, "due_at", self.expiry_time)

    def time_left(self, now: datetime) -> int:
        """Whole seconds until the next attempt is due, rounded up: 0 only once it is due (or not pending)."""
        if self.status not in PENDING_STATUSES:
            return 0
        return max(0, math.ceil((self.due_at - now).total_seconds()))

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The public JSON form (field names of the HTTP service timerctl replaces)."""
        return self._public(time_left=self.time_left(now))

    def to_record(self) -> dict[str, Any]:
        """The wire form used on the queue and in the cache: public fields, no derived ``timeLeft``."""
        data = self._public()
        data["dueAt"] = format_instant(self.due_at)
        data["revision"] = self.revision
        return data

    def _public(self, time_left: int | None = None) -> dict[str, Any]:
        """The public fields in their documented order, with ``timeLeft`` when given."""
        data: dict[str, Any] = {
            "timerId": self.timer_id,
            "webhookUrl": self.webhook_url,
            "expiryTime": format_instant(self.expiry_time),
            "createdAt": format_instant(self.created_at),
            "timerStatus": self.status.value,
        }
        if time_left is not None:
            data["timeLeft"] = time_left
        data["payload"] = self.payload
        data["attempts"] = self.attempts
        data["firedAt"] = format_instant(self.fired_at) if self.fired_at else None
        data["lastError"] = self.last_error
        data["nextAttemptAt"] = format_instant(self.due_at) if self.status in PENDING_STATUSES else None
        data["endedAt"] = format_instant(self.ended_at) if self.ended_at else None
        data["deliveryCount"] = self.delivery_count
        data["onFailureUrl"] = self.on_failure_url
        return data

    @classmethod
    def from_record(cls, data: Any) -> Timer:
        """A Timer from ``to_record``/``to_json`` output; InvalidInput naming the first bad field."""
        if not isinstance(data, dict):
            raise InvalidInput(f"timer record must be a JSON object, got {type(data).__name__}")
        try:
            timer_id = validate_timer_id(data["timerId"])
            url = validate_url(data["webhookUrl"])
            expiry = parse_instant(data["expiryTime"])
            created = parse_instant(data["createdAt"])
            status = Status(data.get("timerStatus", Status.SCHEDULED.value))
            attempts = _count(data, "attempts")
            fired = data.get("firedAt")
            last_error = data.get("lastError")
            if last_error is not None and not isinstance(last_error, str):
                raise InvalidInput("lastError must be a string or null")
            if last_error is not None:
                last_error.encode()  # UnicodeEncodeError (a ValueError) on lone surrogates no store can write
            due = data.get("dueAt")
            payload = data.get("payload")
            encode_payload(payload)
            revision = _count(data, "revision")
            delivery_count = _count(data, "deliveryCount")
            ended = data.get("endedAt")
            on_failure = data.get("onFailureUrl")
            if on_failure is not None:
                validate_url(on_failure)
            return cls(
                timer_id=timer_id,
                webhook_url=url,
                expiry_time=expiry,
                created_at=created,
                status=status,
                payload=payload,
                attempts=attempts,
                fired_at=parse_instant(fired) if fired else None,
                last_error=last_error,
                due_at=parse_instant(due) if due else expiry,
                revision=revision,
                ended_at=parse_instant(ended) if ended else None,
                delivery_count=delivery_count,
                on_failure_url=on_failure,
            )
        except KeyError as exc:
            raise InvalidInput(f"timer record is missing {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"timer record has a bad value: {exc}") from exc

    def move(self, status: Status, **changes: Any) -> Timer:
        """A copy in ``status``; ValueError when the state machine forbids the move."""
        if not can_transition(self.status, status):
            raise ValueError(f"{self.timer_id}: {self.status.value} -> {status.value} is not allowed")
        return replace(self, status=status, **changes)


def _count(data: dict[str, Any], name: str) -> int:
    """The non-negative integer field ``name`` of a record (0 when absent); InvalidInput naming it otherwise."""
    value = data.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STORED_INT:
        raise InvalidInput(f"{name} must be a non-negative integer up to {MAX_STORED_INT}, got {value!r}")
    return value

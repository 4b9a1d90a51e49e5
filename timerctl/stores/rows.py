"""One tolerant decoder for stored timers: a row that is no longer a valid Timer reads back Failed, saying why.

A store edited by hand, written by another tool or damaged on disk can hold a row the model cannot
represent: a payload that is not JSON, an unknown status, an instant that is not one. Raising on it would
crash whatever reads it, and a runner claiming it would crash at every restart (``Restart=on-failure``)
with its batch left Running. So every backend decodes every row through ``decode_row``: a good row is its
Timer; a corrupt one is a Failed Timer with placeholders for what could not be decoded and ``last_error``
naming the corruption (``stored timer is corrupt: payload is not valid JSON (...)``). ``claim_due`` writes
that outcome back instead of handing the row to its runner, so it stays Failed for everyone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from timerctl.model import MAX_STORED_INT, Status, Timer

#: How ``last_error`` of a timer read back from a corrupt row starts.
CORRUPT = "stored timer is corrupt: "
#: The instant shown for one that could not be decoded (and not derived from another field).
PLACEHOLDER_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
_STATUSES = {s.value: s for s in Status}
_ACCEPTED_STATUSES = ", ".join(_STATUSES)
#: What decoding one field may raise on bad data (a str where a number belongs, a huge number, deep JSON).
_BAD = (TypeError, ValueError, KeyError, OverflowError, RecursionError, AttributeError)
_MAX_ERROR = 500

T = TypeVar("T")
#: A decoded row: its Timer and None, or a corrupt row's Failed Timer and what is corrupt.
Decoded = tuple[Timer, str | None]
#: Timer's fields in order: the order of every backend's stored fields, as ``decode_row`` takes them.
TIMER_FIELDS = tuple(f.name for f in fields(Timer))


def _shown(value: Any) -> str:
    """A stored value in a message: its repr, cut short (a payload may be 64 KiB)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _text(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"{_shown(value)} is not text")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _attempts(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_STORED_INT:
        raise TypeError(f"{_shown(value)} is not a non-negative count")
    return value


def _status(value: Any) -> Status:
    try:
        return _STATUSES[value]
    except (KeyError, TypeError):
        raise ValueError(f"{_shown(value)} is not one of {_ACCEPTED_STATUSES}") from None


def _payload(value: Any) -> Any:
    if value is None:
        return None
    if type(value) is not str:
        raise TypeError(f"{_shown(value)} is not JSON text")
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError("is JSON nested too deeply") from None


def changed_fields(old: Timer, new: Timer) -> list[str]:
    """The names of the fields ``new`` changes: all a compare-and-set rewrites, the rest left as stored."""
    return [name for name in TIMER_FIELDS if getattr(old, name) != getattr(new, name)]


def status_of(value: Any) -> Status:
    """The Status a stored status value counts as: a value that is no status counts as Failed, as it reads."""
    return _STATUSES.get(value, Status.FAILED) if isinstance(value, str) else Status.FAILED


def decode_row(values: Sequence[Any], instant: Callable[[Any], datetime]) -> Decoded:
    """The Timer in a stored row, and None; or, for a corrupt row, a Failed Timer and what is corrupt.

    ``values`` are the stored fields in ``Timer``'s order (id, URL, expiry, created, status, payload,
    attempts, fired, last error, due, lease owner, lease until, revision, ended, delivery count, failure
    callback URL); ``instant`` decodes one stored instant and raises on anything else. Never raises for
    bad data.
    """
    (tid, url, expiry, created, status, payload, attempts, fired, error, due, owner, lease, rev, ended, count, hook) = (
        values
    )
    # The common case in one go, at the cost of the unchecked decoder it replaced (every claimed timer is
    # decoded); any doubt falls through to the field-by-field pass, which applies the same checks and
    # says what is wrong.
    try:
        if (
            type(tid) is str
            and type(url) is str
            and type(attempts) is int
            and 0 <= attempts <= MAX_STORED_INT
            and (payload is None or type(payload) is str)
            and (error is None or type(error) is str)
            and (owner is None or type(owner) is str)
            and type(rev) is int
            and type(count) is int
            and 0 <= rev <= MAX_STORED_INT
            and 0 <= count <= MAX_STORED_INT
            and (hook is None or type(hook) is str)
        ):
            return Timer(
                tid,
                url,
                instant(expiry),
                instant(created),
                _STATUSES[status],
                None if payload is None else json.loads(payload),
                attempts,
                None if fired is None else instant(fired),
                error,
                instant(due),
                owner,
                None if lease is None else instant(lease),
                rev,
                None if ended is None else instant(ended),
                count,
                hook,
            ), None
    except _BAD:
        pass
    return _field_by_field(values, instant)


def _field_by_field(values: Sequence[Any], instant: Callable[[Any], datetime]) -> Decoded:
    """``decode_row`` one field at a time: each undecodable field is named and given a placeholder."""
    (tid, url, expiry, created, status, payload, attempts, fired, error, due, owner, lease, rev, ended, count, hook) = (
        values
    )
    problems: list[str] = []

    def field(label: str, decode: Callable[[Any], T], raw: Any, placeholder: T) -> T:
        try:
            return decode(raw)
        except _BAD as exc:
            problems.append(f"{label} {exc}" if str(exc) else f"{label} {_shown(raw)} is unreadable")
            return placeholder

    def at(raw: Any) -> datetime:
        try:
            return instant(raw)
        except _BAD as exc:
            raise ValueError(f"{_shown(raw)} is not an instant ({exc})") from None

    def maybe_at(raw: Any) -> datetime | None:
        return None if raw is None else at(raw)

    expiry_time = field("expiryTime", at, expiry, PLACEHOLDER_INSTANT)
    timer = Timer(
        timer_id=field("timerId", _text, tid, "" if tid is None else str(tid)),
        webhook_url=field("webhookUrl", _text, url, ""),
        expiry_time=expiry_time,
        created_at=field("createdAt", at, created, PLACEHOLDER_INSTANT),
        status=field("status", _status, status, Status.FAILED),
        payload=field("payload", _payload, payload, None),
        attempts=field("attempts", _attempts, attempts, 0),
        fired_at=field("firedAt", maybe_at, fired, None),
        last_error=field("lastError", _optional_text, error, None),
        due_at=field("dueAt", at, due, expiry_time),
        lease_owner=field("leaseOwner", _optional_text, owner, None),
        lease_until=field("leaseUntil", maybe_at, lease, None),
        revision=field("revision", _attempts, rev, 0),
        ended_at=field("endedAt", maybe_at, ended, None),
        delivery_count=field("deliveryCount", _attempts, count, 0),
        on_failure_url=field("onFailureUrl", _optional_text, hook, None),
    )
    if not problems:
        return timer, None
    corruption = "; ".join(problems)
    if len(corruption) > _MAX_ERROR:
        corruption = corruption[: _MAX_ERROR - 1] + "…"
    failed = Timer(
        timer_id=timer.timer_id,
        webhook_url=timer.webhook_url,
        expiry_time=timer.expiry_time,
        created_at=timer.created_at,
        status=Status.FAILED,
        payload=timer.payload,
        attempts=timer.attempts,
        fired_at=timer.fired_at,
        last_error=CORRUPT + corruption,
        due_at=timer.due_at,
        revision=timer.revision,
        ended_at=timer.ended_at,
        delivery_count=timer.delivery_count,
    )
    return failed, corruption

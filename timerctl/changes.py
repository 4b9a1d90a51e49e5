"""What a person may do to a timer after creating it — pure rules over ``Timer``, applied by ``Store.modify``.

Each rule returns the changed timer or raises the domain error that refuses it (Conflict, exit 4 / 409,
naming the status). A change bumps ``revision`` and drops any runner's lease: the runner holding the
timer finds its start refused (it commits to a POST only of the revision it holds) and the timer is
claimed afresh, at its new instant, by whichever runner comes first. A change that changes nothing is
no change: the timer is returned as it was, so a repeated request (or a replayed Kafka record) is a no-op.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from timerctl.attempts import Delivery
from timerctl.model import PENDING_STATUSES, Conflict, Status, Timer, encode_payload, format_instant, validate_url
from timerctl.redaction import redact_url

#: ``Update`` field left as it is.
KEEP: Any = object()


def _moved(timer: Timer, status: Status, **changes: Any) -> Timer:
    return timer.move(status, revision=timer.revision + 1, lease_owner=None, lease_until=None, **changes)


def _refuse(timer: Timer, action: str, allowed: str) -> Conflict:
    why = "its POST has already started" if timer.status is Status.RUNNING else f"it is {timer.status.value}"
    return Conflict(f"timer {timer.timer_id} cannot be {action}: {why}; only a {allowed} timer can")


def cancel(timer: Timer, now: datetime) -> Timer:
    """``timer`` Cancelled; Conflict once its POST has started or it has ended."""
    if timer.status not in PENDING_STATUSES:
        raise _refuse(timer, "cancelled", "Scheduled or Retrying")
    return _moved(timer, Status.CANCELLED, ended_at=now)


@dataclass(frozen=True, slots=True)
class Update:
    """The fields an update sets; ``KEEP`` leaves one as it is. ``expiry_time`` is already resolved and checked."""

    expiry_time: Any = KEEP
    webhook_url: Any = KEEP
    payload: Any = KEEP
    on_failure_url: Any = KEEP

    def __post_init__(self) -> None:
        if self.webhook_url is not KEEP:
            validate_url(self.webhook_url)
        if self.on_failure_url not in (KEEP, None):
            validate_url(self.on_failure_url)
        if self.payload is not KEEP:
            encode_payload(self.payload)

    @property
    def empty(self) -> bool:
        return all(v is KEEP for v in (self.expiry_time, self.webhook_url, self.payload, self.on_failure_url))

    def changes(self) -> dict[str, Any]:
        """The Timer fields this update sets (a new instant moves the due time with it)."""
        fields: dict[str, Any] = {}
        if self.expiry_time is not KEEP:
            fields["expiry_time"] = self.expiry_time
            fields["due_at"] = self.expiry_time
        for name in ("webhook_url", "payload", "on_failure_url"):
            value = getattr(self, name)
            if value is not KEEP:
                fields[name] = value
        return fields


def update(timer: Timer, change: Update) -> Timer:
    """``timer`` with ``change`` applied, in its status; Conflict unless it is Scheduled or Retrying."""
    if timer.status not in PENDING_STATUSES:
        raise _refuse(timer, "updated", "Scheduled or Retrying")
    fields = change.changes()
    if all(getattr(timer, name) == value for name, value in fields.items()):
        return timer
    return _moved(timer, timer.status, **fields)


def fire_now(timer: Timer, now: datetime) -> Timer:
    """``timer`` due at ``now`` (its ``expiryTime`` stays what was asked for); Conflict unless pending."""
    if timer.status not in PENDING_STATUSES:
        raise _refuse(timer, "fired now", "Scheduled or Retrying")
    if timer.due_at <= now:
        return timer
    return _moved(timer, timer.status, due_at=now)


def retry(timer: Timer, at: datetime) -> Timer:
    """A Failed ``timer`` Scheduled again at ``at`` with a fresh attempt budget; its history is kept."""
    if timer.status is not Status.FAILED:
        raise Conflict(f"timer {timer.timer_id} cannot be retried: it is {timer.status.value}; only a Failed timer can")
    return _moved(timer, Status.SCHEDULED, due_at=at, attempts=0, fired_at=None, ended_at=None)


#: What a change record may overwrite: a timer a person could still change. A Running timer's POST has
#: started and an ended one is final, so a record that missed those moves must not undo them.
ADOPTABLE = PENDING_STATUSES | {Status.FAILED}
#: What a change record sets: every field a person's change moves. The attempt history (``last_error``,
#: ``delivery_count``) stays the store's, and the lease is dropped.
ADOPTED_FIELDS = (
    "expiry_time",
    "due_at",
    "webhook_url",
    "payload",
    "on_failure_url",
    "status",
    "attempts",
    "fired_at",
    "ended_at",
    "revision",
)


def adopt(record: Timer) -> Callable[[Timer], Timer]:
    """The rule storing a change record's timer over the stored one when the record is a later revision and
    the stored timer is ``ADOPTABLE``; otherwise the stored timer as it is (so a replay changes nothing)."""

    def rule(stored: Timer) -> Timer:
        if stored.revision >= record.revision or stored.status not in ADOPTABLE:
            return stored
        # A runner holding the older revision has its start refused, and claims the timer afresh.
        adopted = {name: getattr(record, name) for name in ADOPTED_FIELDS}
        return replace(stored, lease_owner=None, lease_until=None, **adopted)

    return rule


#: Attempts a failure callback carries.
CALLBACK_DELIVERIES = 5
_CALLBACKS = uuid.UUID("6b1d3f0e-2a1c-4c55-9d3e-6f1f7c1e0b2a")


def failure_callback(timer: Timer, deliveries: list[Delivery], now: datetime) -> Timer | None:
    """The one-shot timer that tells ``timer``'s ``on_failure_url`` it ended Failed, or None without one.

    Its id is derived from the timer and its attempt count, so recording the same failure twice (a runner
    retrying a write) spawns one callback, while a timer retried by hand and failing again gets another.
    The callback has no callback of its own: never recursive.
    """
    if timer.on_failure_url is None or timer.status is not Status.FAILED:
        return None
    key = f"{timer.timer_id}:{timer.delivery_count}"
    return Timer(
        timer_id=f"on-failure-{uuid.uuid5(_CALLBACKS, key)}",
        webhook_url=timer.on_failure_url,
        expiry_time=now,
        created_at=now,
        payload={
            "event": "timer.failed",
            # Shown as everywhere else: the webhook's query string may hold its secret, not the hook's.
            "timer": {**timer.to_json(now), "webhookUrl": redact_url(timer.webhook_url)},
            "deliveries": [d.to_json() for d in deliveries[-CALLBACK_DELIVERIES:]],
            "failedAt": format_instant(timer.ended_at or now),
        },
    )

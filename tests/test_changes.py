"""What a person may do to a timer once created (``changes.py``): cancel, update, fire now, retry, and the
failure callback a Failed timer spawns — pure rules, each tested on its own.

Each rule is allowed from some statuses and refused (Conflict, exit 4) from the others with a message naming
the status, or saying the POST already started; a rule that changes something bumps ``revision`` and drops
the runner's lease, and one that changes nothing returns the timer as it was. How a store applies them
(``modify``) is in ``test_store_base.py`` and ``test_store_contract.py``. Every instant is fixed.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from tests.factories import make_timer
from timerctl import changes
from timerctl.attempts import Delivery
from timerctl.changes import CALLBACK_DELIVERIES, KEEP, Update
from timerctl.model import MAX_PAYLOAD_BYTES, Conflict, InvalidInput, Status, Timer, validate_timer_id

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
URL = "https://hooks.example.com/fire"
HOOK = "https://ops.example.com/failed"

#: ``make(**fields)``: timer ``t-1`` (Scheduled unless ``status=``), due a minute after NOW, held by runner r1.
make = partial(
    make_timer,
    "t-1",
    NOW + timedelta(minutes=1),
    url=URL,
    created_at=NOW - timedelta(hours=1),
    lease_owner="r1",
    lease_until=NOW + 30 * SEC,
    revision=2,
    payload={"v": 1},
)
PENDING = [Status.SCHEDULED, Status.RETRYING]
NOT_PENDING = [Status.RUNNING, Status.FINISHED, Status.FAILED, Status.CANCELLED]


def why(status: Status) -> str:
    """How a refusal explains the status it found."""
    return "its POST has already started" if status is Status.RUNNING else f"it is {status.value}"


def same_but(changed: Timer, original: Timer, **fields: Any) -> bool:
    """Whether ``changed`` is ``original`` with ``fields``, one more revision and no lease: a change's mark."""
    expected = replace(original, **fields, revision=original.revision + 1, lease_owner=None, lease_until=None)
    return changed == expected


# --- cancel ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", PENDING)
@pytest.mark.parametrize("held", [True, False], ids=["claimed", "free"])
def test_cancel_a_pending_timer_claimed_or_not(status: Status, held: bool) -> None:
    timer = make(status=status, attempts=0 if status is Status.SCHEDULED else 2)
    if not held:
        timer = replace(timer, lease_owner=None, lease_until=None)
    done = changes.cancel(timer, NOW)
    assert same_but(done, timer, status=Status.CANCELLED, ended_at=NOW)
    assert timer.status is status, "frozen: the original is untouched"


@pytest.mark.parametrize("status", NOT_PENDING)
def test_cancel_is_refused_once_the_post_started_or_the_timer_ended(status: Status) -> None:
    with pytest.raises(Conflict) as info:
        changes.cancel(make(status=status), NOW)
    assert str(info.value) == f"timer t-1 cannot be cancelled: {why(status)}; only a Scheduled or Retrying timer can"
    assert info.value.exit_code == 4


# --- update ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", PENDING)
def test_update_changes_a_pending_timer_in_place(status: Status) -> None:
    timer = make(status=status, due_at=NOW + 5 * SEC)
    change = Update(
        expiry_time=NOW + timedelta(hours=2), webhook_url="https://new.example.com/x", payload=[1], on_failure_url=HOOK
    )
    done = changes.update(timer, change)
    assert same_but(
        done,
        timer,
        expiry_time=NOW + timedelta(hours=2),
        due_at=NOW + timedelta(hours=2),  # the next attempt moves with the instant
        webhook_url="https://new.example.com/x",
        payload=[1],
        on_failure_url=HOOK,
    )
    assert done.status is status and done.timer_id == "t-1"


def test_update_sets_only_what_it_names() -> None:
    timer = make(on_failure_url=HOOK)
    assert same_but(changes.update(timer, Update(payload=None)), timer, payload=None)
    assert same_but(changes.update(timer, Update(on_failure_url=None)), timer, on_failure_url=None)
    assert same_but(changes.update(timer, Update(webhook_url=HOOK)), timer, webhook_url=HOOK)


def test_an_update_that_changes_nothing_is_no_change() -> None:
    timer = make(on_failure_url=HOOK)
    same = Update(expiry_time=timer.expiry_time, webhook_url=URL, payload={"v": 1}, on_failure_url=HOOK)
    assert changes.update(timer, same) is timer, "no new revision: the runner holding it keeps its lease"
    assert changes.update(timer, Update()) is timer
    assert Update().empty and not Update(payload=None).empty and not Update(on_failure_url=None).empty


@pytest.mark.parametrize("status", NOT_PENDING)
def test_update_is_refused_once_the_post_started_or_the_timer_ended(status: Status) -> None:
    with pytest.raises(Conflict, match=f"^timer t-1 cannot be updated: {why(status)}; only a Scheduled or Retrying"):
        changes.update(make(status=status), Update(payload=2))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        pytest.param({"webhook_url": "ftp://x.example/"}, "http:// or https://", id="url"),
        pytest.param({"on_failure_url": "http://user:pw@x.example/"}, "credentials", id="failure-url"),
        pytest.param({"payload": "a" * MAX_PAYLOAD_BYTES}, "at most 65536", id="payload"),
        pytest.param({"payload": float("nan")}, "not JSON-serialisable", id="payload-nan"),
    ],
)
def test_an_update_is_validated_as_a_create_is(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        Update(**fields)


def test_update_changes_lists_the_timer_fields_it_sets() -> None:
    assert Update().changes() == {}
    at = NOW + SEC
    assert Update(expiry_time=at, payload=None).changes() == {"expiry_time": at, "due_at": at, "payload": None}
    assert Update(webhook_url=URL, on_failure_url=KEEP).changes() == {"webhook_url": URL}


# --- fire now ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", PENDING)
def test_fire_now_makes_a_pending_timer_due_at_once(status: Status) -> None:
    timer = make(status=status)
    done = changes.fire_now(timer, NOW)
    assert same_but(done, timer, due_at=NOW)
    assert done.expiry_time == NOW + timedelta(minutes=1), "what was asked for is kept"


def test_fire_now_of_a_timer_already_due_is_no_change() -> None:
    timer = make(due_at=NOW - SEC)
    assert changes.fire_now(timer, NOW) is timer
    due = make(due_at=NOW)
    assert changes.fire_now(due, NOW) is due


@pytest.mark.parametrize("status", NOT_PENDING)
def test_fire_now_is_refused_once_the_post_started_or_the_timer_ended(status: Status) -> None:
    with pytest.raises(Conflict, match=f"^timer t-1 cannot be fired now: {why(status)}; only a Scheduled or Retrying"):
        changes.fire_now(make(status=status), NOW)


# --- retry -----------------------------------------------------------------------------------------------


def test_retry_schedules_a_failed_timer_again_with_a_fresh_budget_and_its_history() -> None:
    failed = make(
        status=Status.FAILED,
        attempts=8,
        fired_at=NOW - timedelta(minutes=5),
        last_error="HTTP 500",
        ended_at=NOW - SEC,
        delivery_count=8,
        lease_owner=None,
        lease_until=None,
    )
    done = changes.retry(failed, NOW + 10 * SEC)
    assert same_but(
        done, failed, status=Status.SCHEDULED, attempts=0, fired_at=None, ended_at=None, due_at=NOW + 10 * SEC
    )
    assert (done.delivery_count, done.last_error) == (8, "HTTP 500"), "the history is kept"


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.FAILED])
def test_retry_is_refused_unless_the_timer_failed(status: Status) -> None:
    with pytest.raises(Conflict) as info:
        changes.retry(make(status=status), NOW)
    assert str(info.value) == f"timer t-1 cannot be retried: it is {status.value}; only a Failed timer can"


# --- the failure callback -----------------------------------------------------------------------------------


def attempts(n: int) -> list[Delivery]:
    return [Delivery(i, NOW - (n - i) * SEC, 10, 500, "HTTP 500", "oops") for i in range(1, n + 1)]


FAILED = make(
    status=Status.FAILED,
    attempts=8,
    last_error="HTTP 500",
    ended_at=NOW - SEC,
    delivery_count=8,
    on_failure_url=HOOK,
    lease_owner=None,
    lease_until=None,
)


def test_failure_callback_posts_the_timer_and_its_last_attempts_to_the_hook() -> None:
    callback = changes.failure_callback(FAILED, attempts(8), NOW)
    assert callback is not None
    assert (callback.webhook_url, callback.status, callback.expiry_time, callback.created_at) == (
        HOOK,
        Status.SCHEDULED,
        NOW,
        NOW,
    )
    assert validate_timer_id(callback.timer_id).startswith("on-failure-")
    assert callback.payload == {
        "event": "timer.failed",
        "timer": FAILED.to_json(NOW),
        "deliveries": [d.to_json() for d in attempts(8)[-CALLBACK_DELIVERIES:]],
        "failedAt": "2030-01-01T11:59:59.000Z",
    }


def test_failure_callback_keeps_the_webhooks_query_string_to_itself() -> None:
    secret = replace(FAILED, webhook_url="https://hooks.example.com/t?token=s3cret-value")
    callback = changes.failure_callback(secret, attempts(1), NOW)
    assert callback is not None
    assert callback.payload["timer"]["webhookUrl"] == "https://hooks.example.com/t"
    assert "s3cret" not in repr(callback.payload)


def test_failure_callback_id_is_the_same_for_the_same_failure_only() -> None:
    first = changes.failure_callback(FAILED, attempts(8), NOW)
    again = changes.failure_callback(FAILED, attempts(3), NOW + timedelta(minutes=5))
    assert first is not None and again is not None
    assert again.timer_id == first.timer_id, "recorded twice (or read again later): one callback"
    failed_again = changes.failure_callback(replace(FAILED, delivery_count=16), attempts(8), NOW)
    other = changes.failure_callback(replace(FAILED, timer_id="t-2"), attempts(8), NOW)
    assert failed_again is not None and other is not None
    assert len({first.timer_id, failed_again.timer_id, other.timer_id}) == 3


def test_failure_callback_is_never_recursive() -> None:
    callback = changes.failure_callback(FAILED, attempts(1), NOW)
    assert callback is not None and callback.on_failure_url is None
    failed_callback = replace(callback, status=Status.FAILED, ended_at=NOW + SEC)
    assert changes.failure_callback(failed_callback, attempts(8), NOW + SEC) is None


@pytest.mark.parametrize(
    "timer",
    [
        pytest.param(replace(FAILED, on_failure_url=None), id="no-hook"),
        pytest.param(replace(FAILED, status=Status.FINISHED), id="finished"),
        pytest.param(replace(FAILED, status=Status.CANCELLED), id="cancelled"),
        pytest.param(replace(FAILED, status=Status.RETRYING), id="retrying"),
    ],
)
def test_failure_callback_only_for_a_failed_timer_with_a_hook(timer: Timer) -> None:
    assert changes.failure_callback(timer, attempts(8), NOW) is None

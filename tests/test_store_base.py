"""The logic written once in ``stores/base.py``, on every backend: ``cancel``, and ``modify`` (read, apply a rule
of the model, compare-and-set) under the races it is written for.

``store`` is every backend, as in the contract suite (``tests/fixtures_stores.py``). All instants are fixed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from tests.fixtures_stores import (
    SEC,
    T0,
    every_backend,  # noqa: F401 (the fixture `store` here: every backend)
    make,
)
from timerctl import model
from timerctl.model import Conflict, NotFound, Status, Timer
from timerctl.stores import base
from timerctl.stores.base import Store

# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_scheduled_timer(store: Store) -> None:
    # Lease fields left on a Scheduled timer (a runner that wrote its hand-back partly) are cleared.
    store.insert(make("a", lease_owner="ghost", lease_until=T0))
    done = store.cancel("a")
    assert done.status is Status.CANCELLED
    assert done.timer_id == "a"
    got = store.get("a")
    assert got is not None
    assert got.status is Status.CANCELLED
    assert got.lease_owner is None and got.lease_until is None
    assert store.claim_due("r1", T0, T0 + timedelta(days=1), T0 + timedelta(days=2), 10) == []


def test_cancel_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.cancel("nope")
    assert store.get("nope") is None


def test_cancel_missing_with_fallback_stores_a_tombstone(store: Store) -> None:
    queued = make("q1", payload={"from": "queue"})
    done = store.cancel("q1", fallback=queued)
    assert done.status is Status.CANCELLED
    assert done.payload == {"from": "queue"}
    assert store.get("q1") == done
    # The create still in the queue is consumed later: it must not bring the timer back.
    assert store.insert(make("q1", T0 + SEC)) == (done, False)
    assert store.insert_many([make("q1")]) == 0
    assert store.get("q1") == done
    assert store.claim_due("r1", T0, T0 + timedelta(days=1), T0 + timedelta(days=2), 10) == []


@pytest.mark.parametrize("status", [Status.RUNNING, Status.FINISHED, Status.FAILED, Status.CANCELLED])
def test_cancel_of_a_timer_past_scheduled_conflicts_naming_its_status(store: Store, status: Status) -> None:
    store.insert(make("a", status=status))
    with pytest.raises(Conflict) as info:
        store.cancel("a")
    assert status.value in str(info.value)
    assert "a" in str(info.value)
    with pytest.raises(Conflict, match=status.value):
        store.cancel("a", fallback=make("a"))
    got = store.get("a")
    assert got is not None and got.status is status


# --- modify: read, apply a rule of the model, compare-and-set -----------------------------------------


def bump(timer: Timer) -> Timer:
    """A stand-in rule of the model: one more attempt."""
    return replace(timer, attempts=timer.attempts + 1)


def test_modify_stores_what_the_change_returns(store: Store) -> None:
    store.insert(make("a"))
    moved = store.modify("a", lambda t: replace(t, webhook_url="https://b.example.com/", payload=[1], due_at=T0 + SEC))
    assert moved == replace(make("a"), webhook_url="https://b.example.com/", payload=[1], due_at=T0 + SEC)
    assert store.get("a") == moved
    assert store.modify("a", lambda t: t) == moved, "a change that changes nothing is the timer as stored"


def test_modify_of_a_missing_timer_is_not_found_and_stores_nothing(store: Store) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.modify("nope", bump)
    assert store.get("nope") is None


def test_modify_refuses_a_fallback_or_a_change_of_another_id(store: Store) -> None:
    store.insert(make("a"))
    with pytest.raises(ValueError, match="fallback is timer b, not a"):
        store.modify("a", bump, fallback=make("b"))
    with pytest.raises(ValueError, match="rename timer a to b"):
        store.modify("a", lambda t: replace(t, timer_id="b"))
    assert store.get("a") == make("a") and store.get("b") is None


def test_modify_retries_a_lost_race_from_what_the_winner_left(store: Store) -> None:
    store.insert(make("a"))
    seen: list[int] = []

    def bump_while_another_writer_bumps(timer: Timer) -> Timer:
        seen.append(timer.attempts)
        if len(seen) == 1:
            store.modify("a", bump)  # lands between this modify's read and its write
        return bump(timer)

    assert store.modify("a", bump_while_another_writer_bumps).attempts == 2
    assert seen == [0, 1], "applied again to the winner's state, not written over it"
    got = store.get("a")
    assert got is not None and got.attempts == 2


def test_a_cancel_that_loses_the_race_to_a_claim_conflicts_and_leaves_the_claim(store: Store) -> None:
    store.insert(make("a"))
    claims: list[list[Timer]] = []

    def cancel_while_a_runner_claims(timer: Timer) -> Timer:
        if not claims:
            claims.append(store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10))
        return model.cancel(timer)

    with pytest.raises(Conflict, match="timer a is Running"):
        store.modify("a", cancel_while_a_runner_claims)
    got = store.get("a")
    assert got is not None and (got.status, got.lease_owner) == (Status.RUNNING, "r1")


def test_modify_keeps_a_lease_renewed_meanwhile(store: Store) -> None:
    """The lease is part of what the swap compares: writing the old one back would shorten it."""
    store.insert(make("a"))
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    renewed: list[set[str]] = []

    def note_while_the_runner_renews(timer: Timer) -> Timer:
        if not renewed:
            renewed.append(store.renew("r1", T0 + 90 * SEC))
        return replace(timer, last_error="noted")

    store.modify("a", note_while_the_runner_renews)
    got = store.get("a")
    assert got is not None and (got.lease_until, got.last_error) == (T0 + 90 * SEC, "noted")


def test_a_tombstone_that_loses_the_race_to_its_create_cancels_the_create(store: Store) -> None:
    queued, consumed = make("q", payload={"from": "cache"}), make("q", payload={"from": "consumer"})

    def cancel_while_the_consumer_stores_it(timer: Timer) -> Timer:
        if store.get("q") is None:
            store.insert(consumed)  # between the read that found nothing and the tombstone's insert
        return model.cancel(timer)

    done = store.modify("q", cancel_while_the_consumer_stores_it, fallback=queued)
    assert done == model.cancel(consumed)
    assert store.get("q") == done


def test_modify_gives_up_on_a_timer_that_never_stops_changing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MAX_RACES", 3)
    store.insert(make("a"))
    tries: list[Timer] = []

    def always_beaten(timer: Timer) -> Timer:
        tries.append(timer)
        store.modify("a", bump)
        return bump(timer)

    with pytest.raises(Conflict, match="timer a changed 3 times while being modified; try again"):
        store.modify("a", always_beaten)
    got = store.get("a")
    assert len(tries) == 3 and got is not None and got.attempts == 3, "only the other writer's changes landed"

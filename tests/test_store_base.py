"""The logic written once in ``stores/base.py``, on every backend: ``cancel`` (of claimed timers too), and
``modify`` (read, apply a rule of the model, compare-and-set) under the races it is written for.

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
from timerctl import changes
from timerctl.model import Conflict, NotFound, Status, Timer
from timerctl.stores import base
from timerctl.stores.base import Store, StoreBase

# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_scheduled_timer(store: Store) -> None:
    # Lease fields left on a Scheduled timer (a runner that wrote its hand-back partly) are cleared.
    store.insert(make("a", lease_owner="ghost", lease_until=T0))
    done = store.cancel("a", T0 - SEC)
    assert (done.status, done.timer_id, done.ended_at, done.revision) == (Status.CANCELLED, "a", T0 - SEC, 1)
    got = store.get("a")
    assert got == done
    assert got.lease_owner is None and got.lease_until is None
    assert store.claim_due("r1", T0, T0 + timedelta(days=1), T0 + timedelta(days=2), 10) == []


@pytest.mark.parametrize("leased", [False, True], ids=["free", "claimed"])
def test_cancel_retrying_timer_claimed_or_not(store: Store, leased: bool) -> None:
    store.insert(make("a", status=Status.RETRYING, attempts=3, last_error="HTTP 503", due_at=T0 + SEC))
    if leased:
        assert [t.timer_id for t in store.claim_due("r1", T0, T0 + SEC, T0 + 30 * SEC, 10)] == ["a"]
    done = store.cancel("a", T0)
    assert (done.status, done.attempts, done.last_error, done.lease_owner) == (Status.CANCELLED, 3, "HTTP 503", None)
    assert store.get("a") == done


def test_cancel_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.cancel("nope", T0)
    assert store.get("nope") is None


def test_cancel_missing_with_fallback_stores_a_tombstone(store: Store) -> None:
    queued = make("q1", payload={"from": "queue"})
    done = store.cancel("q1", T0, fallback=queued)
    assert done.status is Status.CANCELLED
    assert done.payload == {"from": "queue"}
    assert store.get("q1") == done
    # The create still in the queue is consumed later: it must not bring the timer back.
    assert store.insert(make("q1", T0 + SEC)) == (done, False)
    assert store.insert_many([make("q1")]) == 0
    assert store.get("q1") == done
    assert store.claim_due("r1", T0, T0 + timedelta(days=1), T0 + timedelta(days=2), 10) == []


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (Status.RUNNING, "its POST has already started"),
        (Status.FINISHED, "it is Finished"),
        (Status.FAILED, "it is Failed"),
        (Status.CANCELLED, "it is Cancelled"),
    ],
)
def test_cancel_of_a_timer_past_its_start_conflicts_saying_why(store: Store, status: Status, why: str) -> None:
    store.insert(make("a", status=status))
    with pytest.raises(Conflict) as info:
        store.cancel("a", T0)
    assert str(info.value) == f"timer a cannot be cancelled: {why}; only a Scheduled or Retrying timer can"
    with pytest.raises(Conflict, match=why):
        store.cancel("a", T0, fallback=make("a"))
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


def test_a_cancel_that_races_a_claim_wins_and_the_claim_is_never_started(store: Store) -> None:
    store.insert(make("a"))
    claims: list[list[Timer]] = []

    def cancel_while_a_runner_claims(timer: Timer) -> Timer:
        if not claims:
            claims.append(store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10))
        return changes.cancel(timer, T0)

    done = store.modify("a", cancel_while_a_runner_claims)
    assert (done.status, done.lease_owner) == (Status.CANCELLED, None), "applied again over the claim"
    assert store.start("r1", claims[0]) == []
    assert store.get("a") == done


def test_a_cancel_that_loses_the_race_to_a_start_conflicts_and_leaves_the_post(store: Store) -> None:
    store.insert(make("a"))
    started: list[list[str]] = []

    def cancel_while_a_runner_starts(timer: Timer) -> Timer:
        if not started:
            started.append(store.start("r1", store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)))
        return changes.cancel(timer, T0)

    with pytest.raises(Conflict, match="timer a cannot be cancelled: its POST has already started"):
        store.modify("a", cancel_while_a_runner_starts)
    got = store.get("a")
    assert started == [["a"]]
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
        return changes.cancel(timer, T0)

    done = store.modify("q", cancel_while_the_consumer_stores_it, fallback=queued)
    assert done == changes.cancel(consumed, T0)
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


# --- insert -------------------------------------------------------------------------------------------


def test_an_insert_that_races_the_purge_of_its_id_stores_the_new_timer(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id was taken by an ended timer when inserted, and free when read back: it is inserted again."""
    assert isinstance(store, StoreBase)
    store.insert(make("a", T0 - timedelta(days=9), status=Status.FINISHED, ended_at=T0 - timedelta(days=9)))
    insert_new = store._insert_new
    purges: list[int] = []

    def purged_meanwhile(timer: Timer) -> bool:
        new = insert_new(timer)
        if not new:
            purges.append(store.purge([Status.FINISHED], T0, 10))
        return new

    monkeypatch.setattr(store, "_insert_new", purged_meanwhile)
    fresh = make("a")
    assert store.insert(fresh) == (fresh, True)
    assert purges == [1] and store.get("a") == fresh

"""The Store contract, written once and run against every backend.

``store`` is parametrized over SQLite (a temporary file), MongoStore on mongomock, and MongoStore on a
real server when ``TIMERCTL_TEST_MONGO_URI`` is set (each test gets its own database, dropped after).
All instants are fixed; nothing here reads the clock or sleeps.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import mongomock
import pymongo
import pytest
from pymongo.errors import NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

from timerctl import model
from timerctl.model import BackendUnavailable, Conflict, InvalidInput, NotFound, Outcome, Status, Timer
from timerctl.stores import base
from timerctl.stores import mongo as mongo_module
from timerctl.stores.base import Store
from timerctl.stores.mongo import MongoStore
from timerctl.stores.sqlite import _RENEW, SqliteStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SEC = timedelta(seconds=1)
MS = timedelta(milliseconds=1)
MONGO_URI_ENV = "TIMERCTL_TEST_MONGO_URI"
ROOT = Path(__file__).resolve().parents[1]


def make(timer_id: str, due: datetime = T0, **changes: Any) -> Timer:
    """A Scheduled timer expiring (and due) at ``due``, created an hour before T0."""
    return Timer(
        timer_id=timer_id,
        webhook_url=f"https://hooks.example.com/{timer_id}",
        expiry_time=due,
        created_at=T0 - timedelta(hours=1),
        **changes,
    )


def ids(timers: list[Timer]) -> list[str]:
    return [t.timer_id for t in timers]


def _mongo_uri() -> str:
    uri = os.environ.get(MONGO_URI_ENV)
    if not uri:
        # No MongoDB server can be installed on this project's machines (not in Debian's archive), so a
        # missing URI skips even under CI; the mongomock run covers the same contract without one.
        pytest.skip(f"set {MONGO_URI_ENV}=mongodb://host:port to run the contract on a real MongoDB")
    return uri


@contextmanager
def _mongo_store(kind: str) -> Iterator[MongoStore]:
    """A MongoStore in a database of its own: on mongomock, or on the real server (dropped after)."""
    name = f"timerctl_test_{uuid.uuid4().hex[:12]}"
    if kind == "mongomock":
        yield MongoStore(mongomock.MongoClient(), name)
        return
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        _mongo_uri(), serverSelectionTimeoutMS=5000, tz_aware=True
    )
    try:
        yield MongoStore(client, name)
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture(params=["sqlite", "mongomock", "mongo"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        sqlite = SqliteStore(str(tmp_path / "timers.db"))
        yield sqlite
        sqlite.close()
        return
    with _mongo_store(request.param) as mongo:
        yield mongo


@pytest.fixture(params=["mongomock", "mongo"])
def mongo_store(request: pytest.FixtureRequest) -> Iterator[MongoStore]:
    with _mongo_store(request.param) as mongo:
        yield mongo


# --- insert / get ---------------------------------------------------------------------------------


def test_insert_returns_the_stored_copy_and_that_it_is_new(store: Store) -> None:
    timer = make("a", payload={"k": 1})
    assert store.insert(timer) == (timer, True)
    assert store.get("a") == timer


def test_insert_first_write_wins(store: Store) -> None:
    first = make("a")
    second = Timer("a", "https://other.example.com/x", T0 + SEC, T0, payload="other")
    store.insert(first)
    assert store.insert(second) == (first, False)
    assert store.insert(first) == (first, False), "the same timer again is not new either"
    assert store.get("a") == first


def test_concurrent_inserts_of_one_id_tell_exactly_one_it_is_new(store: Store) -> None:
    """What lets the API answer exactly one 201 to racing creates of one timerId."""
    start = threading.Barrier(16)
    answers: list[tuple[Timer, bool]] = []

    def insert(n: int) -> None:
        start.wait()
        answers.append(store.insert(make("race", payload={"n": n})))

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(new for _, new in answers) == [False] * 15 + [True]
    [winner] = [timer for timer, new in answers if new]
    assert all(timer == winner for timer, _ in answers) and store.get("race") == winner


def test_insert_many_counts_only_new_timers(store: Store) -> None:
    original = make("a")
    store.insert(original)
    newer_a = Timer("a", "https://other.example.com/a", T0 + SEC, T0)
    assert store.insert_many([newer_a, make("b"), make("c")]) == 2
    assert store.get("a") == original
    assert ids(store.find()) == ["a", "b", "c"]
    assert store.insert_many([make("a"), make("b")]) == 0
    assert store.insert_many([]) == 0


def test_insert_many_keeps_the_first_of_repeats_within_a_batch(store: Store) -> None:
    first, repeat = make("d"), Timer("d", "https://other.example.com/d", T0 + SEC, T0)
    assert store.insert_many([first, repeat]) == 1
    assert store.get("d") == first


def test_get_missing_is_none(store: Store) -> None:
    assert store.get("nope") is None


def test_every_field_round_trips_at_millisecond_precision(store: Store) -> None:
    timer = Timer(
        timer_id="full.1:x-y_z",
        webhook_url="https://hooks.example.com/p?q=1&r=%C3%A9",
        expiry_time=T0 + 123 * MS,
        created_at=T0 - timedelta(hours=1) + 7 * MS,
        status=Status.RUNNING,
        payload={"order": {"id": 42, "lines": [1, 2.5, None, True]}, "note": "héllo ✓ 日本語 😀"},
        attempts=3,
        fired_at=T0 + 5 * SEC + 999 * MS,
        last_error="HTTP 503 from hooks.example.com: «busy»",
        due_at=T0 + 10 * SEC + MS,
        lease_owner="runner-1",
        lease_until=T0 + 40 * SEC + 500 * MS,
    )
    store.insert(timer)
    got = store.get(timer.timer_id)
    assert got == timer
    assert got is not None
    for instant in (got.expiry_time, got.created_at, got.fired_at, got.due_at, got.lease_until):
        assert instant is not None and instant.utcoffset() == timedelta(0)


def test_instants_with_other_offsets_are_stored_as_the_same_instant(store: Store) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    at = datetime(2030, 1, 1, 5, 30, 0, 250_000, tzinfo=ist)
    store.insert(make("z", at))
    got = store.get("z")
    assert got is not None
    assert got.expiry_time == T0 + 250 * MS
    assert got.expiry_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"nested": {"deep": {"deeper": [1, {"x": None}]}}, "empty": {}, "list": []},
        "plain text with ünïcødé and \u0000 and emoji 🎉",
        [1, "two", 3.25, False, None],
        0,
        2**70,
        {"a.b": 1, "$c": 2, "": 3},
    ],
    ids=["none", "nested", "string", "list", "zero", "bigint", "odd-keys"],
)
def test_payload_round_trips(store: Store, payload: Any) -> None:
    store.insert(make("p", payload=payload))
    got = store.get("p")
    assert got is not None
    assert got.payload == payload
    assert type(got.payload) is type(payload)


def test_payload_key_order_is_kept(store: Store) -> None:
    store.insert(make("p", payload={"z": 1, "a": 2, "m": 3}))
    got = store.get("p")
    assert got is not None
    assert list(got.payload) == ["z", "a", "m"]


# --- find ------------------------------------------------------------------------------------------


def _populate_for_find(store: Store) -> None:
    store.insert(make("c", T0 + 3 * SEC))
    store.insert(make("tie-b", T0 + 2 * SEC))
    store.insert(make("a", T0 + SEC))
    store.insert(make("tie-a", T0 + 2 * SEC))
    store.insert(make("late", T0 + timedelta(hours=1), status=Status.FINISHED))
    store.cancel("c")


def test_find_orders_by_expiry_then_id(store: Store) -> None:
    _populate_for_find(store)
    assert ids(store.find()) == ["a", "tie-a", "tie-b", "c", "late"]


def test_find_filters_by_status(store: Store) -> None:
    _populate_for_find(store)
    assert ids(store.find(status=Status.SCHEDULED)) == ["a", "tie-a", "tie-b"]
    assert ids(store.find(status=Status.CANCELLED)) == ["c"]
    assert ids(store.find(status=Status.FINISHED)) == ["late"]
    assert store.find(status=Status.FAILED) == []


def test_find_respects_limit(store: Store) -> None:
    _populate_for_find(store)
    assert ids(store.find(limit=2)) == ["a", "tie-a"]
    assert ids(store.find(limit=1)) == ["a"]
    assert store.find(limit=0) == []
    assert store.find(limit=-1) == [], "not read as 'no limit'"


def test_find_due_before_is_inclusive_and_on_expiry(store: Store) -> None:
    _populate_for_find(store)
    # A retry moves due_at, not the expiry find is about.
    store.insert(make("retrying", T0 + SEC, due_at=T0 + timedelta(days=1)))
    assert ids(store.find(due_before=T0 + 2 * SEC)) == ["a", "retrying", "tie-a", "tie-b"]
    assert ids(store.find(due_before=T0 + 2 * SEC - MS)) == ["a", "retrying"]
    assert ids(store.find(status=Status.SCHEDULED, due_before=T0 + 3 * SEC, limit=2)) == ["a", "retrying"]


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


# --- claim_due -------------------------------------------------------------------------------------


def test_claim_due_takes_only_due_timers_oldest_first(store: Store) -> None:
    lease = T0 + timedelta(minutes=5)
    store.insert(make("later", T0 + timedelta(hours=1)))
    store.insert(make("c", T0 + 2 * SEC))
    store.insert(make("b", T0 + SEC))
    store.insert(make("a", T0))
    store.insert(make("done", T0 - SEC, status=Status.FINISHED))
    store.insert(make("retry-later", T0 - SEC, due_at=T0 + timedelta(minutes=1)))
    claimed = store.claim_due("r1", T0, T0 + 2 * SEC, lease, 10)
    assert ids(claimed) == ["a", "b", "c"]
    for timer in claimed:
        assert timer.status is Status.RUNNING
        assert timer.lease_owner == "r1"
        assert timer.lease_until == lease
        assert store.get(timer.timer_id) == timer
    for idle in ("later", "retry-later"):
        got = store.get(idle)
        assert got is not None and got.status is Status.SCHEDULED and got.lease_owner is None


def test_claim_due_respects_limit_and_a_second_owner_gets_nothing(store: Store) -> None:
    lease = T0 + timedelta(minutes=5)
    store.insert_many([make("c", T0 + 2 * SEC), make("a", T0), make("b", T0 + SEC)])
    assert ids(store.claim_due("r1", T0, T0 + 2 * SEC, lease, 2)) == ["a", "b"]
    assert ids(store.claim_due("r1", T0, T0 + 2 * SEC, lease, 2)) == ["c"]
    assert store.claim_due("r2", T0, T0 + 2 * SEC, lease, 10) == []
    assert store.claim_due("r1", T0, T0 + 2 * SEC, lease, 0) == []
    assert {t.lease_owner for t in store.find()} == {"r1"}


def test_claim_due_until_is_inclusive(store: Store) -> None:
    store.insert(make("edge", T0 + SEC))
    assert store.claim_due("r1", T0, T0 + SEC - MS, T0 + timedelta(minutes=5), 10) == []
    assert ids(store.claim_due("r1", T0, T0 + SEC, T0 + timedelta(minutes=5), 10)) == ["edge"]


def test_expired_lease_is_reclaimable_by_another_owner(store: Store) -> None:
    store.insert(make("a", T0))
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    store.insert(make("b", T0 + 31 * SEC))
    now = T0 + 31 * SEC
    claimed = store.claim_due("r2", now, now, now + 30 * SEC, 10)
    assert ids(claimed) == ["a", "b"]
    assert all(t.lease_owner == "r2" and t.lease_until == now + 30 * SEC for t in claimed)
    assert all(t.status is Status.RUNNING for t in claimed)


def test_unexpired_lease_is_not_reclaimable(store: Store) -> None:
    store.insert(make("a", T0))
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    assert store.claim_due("r2", T0 + 29 * SEC, T0 + 29 * SEC, T0 + 60 * SEC, 10) == []
    # A lease ending exactly now has not expired yet.
    assert store.claim_due("r2", T0 + 30 * SEC, T0 + 30 * SEC, T0 + 60 * SEC, 10) == []
    got = store.get("a")
    assert got is not None and got.lease_owner == "r1" and got.lease_until == T0 + 30 * SEC


# --- renew / release -------------------------------------------------------------------------------


def test_renew_extends_every_lease_its_owner_holds_and_no_other(store: Store) -> None:
    store.insert_many([make("a"), make("b"), make("c", T0 + SEC), make("idle", T0 + timedelta(hours=1))])
    assert ids(store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)) == ["a", "b"]
    assert ids(store.claim_due("r2", T0 + SEC, T0 + SEC, T0 + 31 * SEC, 10)) == ["c"]
    assert store.renew("r1", T0 + 90 * SEC) == {"a", "b"}
    for timer_id in ("a", "b"):
        got = store.get(timer_id)
        assert got is not None
        assert (got.status, got.lease_owner, got.lease_until) == (Status.RUNNING, "r1", T0 + 90 * SEC)
    other = store.get("c")
    assert other is not None and (other.lease_owner, other.lease_until) == ("r2", T0 + 31 * SEC)
    assert store.get("idle") == make("idle", T0 + timedelta(hours=1))
    assert store.renew("nobody", T0 + 999 * SEC) == set()


def test_renew_leaves_out_what_its_owner_completed_or_released(store: Store) -> None:
    store.insert_many([make("a"), make("b"), make("c")])
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    assert store.complete("r1", [Outcome("a", Status.FINISHED, 1, fired_at=T0)]) == ["a"]
    assert store.release("r1", ["b"]) == 1
    assert store.renew("r1", T0 + 90 * SEC) == {"c"}
    done, back = store.get("a"), store.get("b")
    assert done is not None and (done.status, done.lease_until) == (Status.FINISHED, None)
    assert back is not None and (back.status, back.lease_until) == (Status.SCHEDULED, None)


def test_renew_after_takeover_reports_the_lease_lost(store: Store) -> None:
    store.insert_many([make("a"), make("b", T0 + 10 * SEC)])
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    store.claim_due("r1", T0 + 10 * SEC, T0 + 10 * SEC, T0 + 40 * SEC, 10)
    now = T0 + 31 * SEC
    assert ids(store.claim_due("r2", now, now, now + 30 * SEC, 10)) == ["a"]
    held = {"a", "b"}
    kept = store.renew("r1", now + 60 * SEC)
    assert kept == {"b"} and held - kept == {"a"}, "what a runner compares to find its lost leases"
    got = store.get("a")
    assert got is not None and got.lease_owner == "r2" and got.lease_until == now + 30 * SEC


def test_release_hands_timers_back_only_for_their_owner(store: Store) -> None:
    store.insert_many([make("a"), make("b")])
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    assert store.release("r2", ["a", "b"]) == 0
    assert {t.status for t in store.find()} == {Status.RUNNING}
    assert store.release("r1", ["a", "missing"]) == 1
    got = store.get("a")
    assert got is not None
    assert (got.status, got.lease_owner, got.lease_until, got.due_at) == (Status.SCHEDULED, None, None, T0)
    assert store.release("r1", ["a"]) == 0
    assert store.release("r1", []) == 0
    held = store.get("b")
    assert held is not None and held.status is Status.RUNNING and held.lease_owner == "r1"
    assert ids(store.claim_due("r2", T0, T0, T0 + 30 * SEC, 10)) == ["a"]


# --- complete --------------------------------------------------------------------------------------


def test_complete_records_finished_failed_and_retry(store: Store) -> None:
    store.insert_many([make("ok"), make("gave-up"), make("retry"), make("keep-due")])
    claimed = {t.timer_id: t for t in store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)}
    outcomes = [
        Outcome("ok", Status.FINISHED, attempts=1, fired_at=T0 + 250 * MS),
        Outcome("gave-up", Status.FAILED, attempts=8, last_error="HTTP 500 after 8 attempts"),
        Outcome("retry", Status.SCHEDULED, attempts=1, last_error="timeout", due_at=T0 + 60 * SEC),
        Outcome("keep-due", Status.SCHEDULED, attempts=2, last_error="HTTP 502"),
    ]
    assert store.complete("r1", outcomes) == ["ok", "gave-up", "retry", "keep-due"]

    # What is stored is the model's own rule for an outcome, on every backend.
    assert [store.get(o.timer_id) for o in outcomes] == [o.apply(claimed[o.timer_id]) for o in outcomes]
    ok, failed, retry, keep = (store.get(i) for i in ("ok", "gave-up", "retry", "keep-due"))
    assert ok == make("ok", status=Status.FINISHED, attempts=1, fired_at=T0 + 250 * MS)
    assert failed == make("gave-up", status=Status.FAILED, attempts=8, last_error="HTTP 500 after 8 attempts")
    assert retry == make("retry", attempts=1, last_error="timeout", due_at=T0 + 60 * SEC)
    assert keep == make("keep-due", attempts=2, last_error="HTTP 502")
    # The retry is due again at its new time, not before; a retry without a due_at keeps the old one.
    assert ids(store.claim_due("r2", T0 + 59 * SEC, T0 + 59 * SEC, T0 + 90 * SEC, 10)) == ["keep-due"]
    assert ids(store.claim_due("r2", T0 + 60 * SEC, T0 + 60 * SEC, T0 + 90 * SEC, 10)) == ["retry"]


def test_complete_ignores_a_stale_owner_after_takeover(store: Store) -> None:
    store.insert(make("a"))
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    now = T0 + 31 * SEC
    store.claim_due("r2", now, now, now + 30 * SEC, 10)
    stale = Outcome("a", Status.FINISHED, attempts=1, fired_at=now)
    assert store.complete("r1", [stale]) == []
    got = store.get("a")
    assert got is not None
    assert (got.status, got.lease_owner, got.attempts, got.fired_at) == (Status.RUNNING, "r2", 0, None)
    failed = Outcome("a", Status.FAILED, attempts=1, last_error="HTTP 410")
    assert store.complete("r2", [failed]) == ["a"]
    got = store.get("a")
    assert got is not None and got.status is Status.FAILED and got.last_error == "HTTP 410"
    assert store.complete("r2", [failed]) == []


@pytest.mark.parametrize("status", [Status.RUNNING, Status.CANCELLED])
def test_complete_refuses_an_outcome_a_runner_cannot_record(store: Store, status: Status) -> None:
    store.insert(make("a"))
    store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    with pytest.raises(ValueError, match=f"outcome of a is {status.value}; expected Failed, Finished, Scheduled"):
        store.complete("r1", [Outcome("a", Status.FINISHED, 1, fired_at=T0), Outcome("a", status, 1)])
    got = store.get("a")
    assert got is not None and (got.status, got.lease_owner) == (Status.RUNNING, "r1"), "nothing of the batch written"


def test_complete_ignores_timers_not_running(store: Store) -> None:
    store.insert_many([make("sched"), make("gone")])
    store.cancel("gone")
    outcomes = [Outcome("sched", Status.FINISHED, 1), Outcome("gone", Status.FINISHED, 1)]
    assert store.complete("r1", [*outcomes, Outcome("missing", Status.FINISHED, 1)]) == []
    assert {t.timer_id: t.status for t in store.find()} == {
        "sched": Status.SCHEDULED,
        "gone": Status.CANCELLED,
    }


# --- counts / ping ---------------------------------------------------------------------------------


def test_counts_cover_every_status(store: Store) -> None:
    assert store.counts() == dict.fromkeys(Status, 0)
    store.insert_many([make("s1"), make("s2"), make("r", status=Status.RUNNING)])
    store.insert_many([make("f", status=Status.FINISHED), make("x", status=Status.FAILED)])
    store.cancel("s2")
    assert store.counts() == {
        Status.SCHEDULED: 1,
        Status.RUNNING: 1,
        Status.FINISHED: 1,
        Status.FAILED: 1,
        Status.CANCELLED: 1,
    }


def test_ping_returns_while_the_backend_answers(store: Store) -> None:
    store.ping()  # the contract: no BackendUnavailable (its raising is tested per backend below)
    store.insert(make("a"))
    store.ping()


# --- corrupt rows ------------------------------------------------------------------------------------
#
# A row no longer a valid timer (edited by hand, written by another tool) reads as Failed with the corruption
# in lastError, and claim_due fails it for good instead of handing it to (and crashing) its runner.

#: Each backend's name for a Timer field, to plant a bad value with that backend's own raw access.
SQLITE_COLUMNS = {
    "payload": "payload",
    "status": "status",
    "expiryTime": "expiry_ms",
    "attempts": "attempts",
    "webhookUrl": "webhook_url",
    "dueAt": "due_ms",
    "leaseUntil": "lease_until_ms",
    "leaseOwner": "lease_owner",
}


def plant(store: Store, timer_id: str, **raw: Any) -> None:
    """Overwrite fields of a stored timer with raw values the store itself would never write."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path, isolation_level=None) as db:
            for name, value in raw.items():
                db.execute(f"UPDATE timers SET {SQLITE_COLUMNS[name]} = ? WHERE timer_id = ?", (value, timer_id))
        return
    assert isinstance(store, MongoStore)
    store._timers.update_one({"timerId": timer_id}, {"$set": raw})


CORRUPTIONS = [
    pytest.param({"payload": "{not json"}, "payload is not valid JSON (Expecting property name", id="payload"),
    pytest.param(
        {"status": "Bogus"},
        "status 'Bogus' is not one of Scheduled, Running, Finished, Failed, Cancelled",
        id="status",
    ),
    pytest.param({"expiryTime": "soon"}, "expiryTime 'soon' is not an instant", id="instant-text"),
    pytest.param({"expiryTime": 2**62}, f"expiryTime {2**62} is not an instant", id="instant-out-of-range"),
    pytest.param({"attempts": "many"}, "attempts 'many' is not a count of attempts", id="attempts"),
    pytest.param({"webhookUrl": b"\xff"}, "webhookUrl b'\\xff' is not text", id="url-bytes"),
]


@pytest.mark.parametrize(("raw", "why"), CORRUPTIONS)
def test_a_corrupt_row_reads_as_failed_naming_the_corruption(store: Store, raw: dict[str, Any], why: str) -> None:
    store.insert_many([make("good", T0 + SEC), make("bad", T0, payload={"k": 1}, attempts=2)])
    plant(store, "bad", **raw)
    got = store.get("bad")
    assert got is not None
    assert got.status is Status.FAILED
    assert got.last_error is not None and got.last_error.startswith("stored timer is corrupt: ")
    assert why in got.last_error and "\n" not in got.last_error
    assert (got.lease_owner, got.lease_until) == (None, None)
    listed = {t.timer_id: t for t in store.find()}
    assert listed["bad"] == got and listed["good"] == make("good", T0 + SEC)
    assert sum(store.counts().values()) == 2
    with pytest.raises(Conflict, match="Failed"):
        store.cancel("bad")


def raw(store: Store, timer_id: str, name: str) -> Any:
    """A stored field as the backend holds it (``name`` as in ``plant``)."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            return db.execute(f"SELECT {SQLITE_COLUMNS[name]} FROM timers WHERE timer_id = ?", (timer_id,)).fetchone()[
                0
            ]
    assert isinstance(store, MongoStore)
    doc = store._timers.find_one({"timerId": timer_id})
    assert doc is not None
    return doc[name]


def test_a_cancel_rewrites_only_the_fields_it_changes(store: Store) -> None:
    """Another tool's payload text (valid JSON, spaced) is still what it wrote after a cancel."""
    store.insert(make("a", payload={"k": 1}))
    plant(store, "a", payload='{ "k" : 1 }')
    assert store.cancel("a") == model.cancel(make("a", payload={"k": 1}))
    assert raw(store, "a", "payload") == '{ "k" : 1 }'
    assert raw(store, "a", "status") == "Cancelled"


def test_modify_never_writes_over_a_corrupt_row(store: Store) -> None:
    store.insert(make("bad", payload={"k": 1}))
    plant(store, "bad", payload="{not json")
    before = store.get("bad")
    with pytest.raises(Conflict, match=r"timer bad is stored corrupt \(payload is not valid JSON .*\); it can be read"):
        store.modify("bad", lambda t: replace(t, status=Status.SCHEDULED, last_error=None))
    assert store.get("bad") == before
    assert store.modify("bad", lambda t: t) == before, "reading it through modify is fine"


@pytest.mark.parametrize(("raw", "why"), CORRUPTIONS)
def test_claim_due_fails_a_corrupt_row_for_good_and_claims_the_rest(
    store: Store, raw: dict[str, Any], why: str
) -> None:
    store.insert_many([make("a", T0 - SEC), make("bad", T0), make("c", T0 + SEC)])
    plant(store, "bad", **raw)
    if "status" in raw:  # a status no timer has is never due: make the row claimable the other way
        plant(store, "bad", status="Scheduled", payload="{not json")
        why = "payload is not valid JSON"
    claimed = store.claim_due("r1", T0, T0 + SEC, T0 + 30 * SEC, 10)
    assert ids(claimed) == ["a", "c"]
    got = store.get("bad")
    assert got is not None and got.status is Status.FAILED and got.last_error is not None
    assert why in got.last_error
    # Written back, not only read so: the stored status is Failed, and no later claim sees the row.
    assert store.counts()[Status.FAILED] == 1
    assert store.claim_due("r2", T0 + SEC, T0 + timedelta(days=1), T0 + timedelta(days=2), 10) == []


def test_claim_due_fails_a_corrupt_row_whose_lease_expired(store: Store) -> None:
    store.insert(make("bad", T0, status=Status.RUNNING, lease_owner="dead", lease_until=T0))
    plant(store, "bad", payload="[1,")
    assert store.claim_due("r1", T0 + SEC, T0 + SEC, T0 + 30 * SEC, 10) == []
    got = store.get("bad")
    assert got is not None and got.status is Status.FAILED and got.lease_owner is None
    assert store.counts()[Status.FAILED] == 1


def test_a_running_timer_without_a_lease_is_reclaimable(store: Store) -> None:
    store.insert_many(
        [
            make("no-lease", T0 + timedelta(hours=1), status=Status.RUNNING),
            make("owner-only", T0 + timedelta(hours=1), status=Status.RUNNING, lease_owner="gone"),
            make("leased", T0 - SEC, status=Status.RUNNING, lease_owner="r0", lease_until=T0 + SEC),
        ]
    )
    claimed = store.claim_due("r1", T0, T0, T0 + 30 * SEC, 10)
    assert sorted(ids(claimed)) == ["no-lease", "owner-only"]
    assert all(t.lease_owner == "r1" and t.lease_until == T0 + 30 * SEC for t in claimed)
    assert store.claim_due("r2", T0, T0, T0 + 30 * SEC, 10) == []


# --- several processes on one backing store --------------------------------------------------------

_CLAIMER = """
import json, sys
from datetime import datetime, timedelta
kind, where, database, owner = sys.argv[1:5]
now = datetime.fromisoformat(sys.argv[5])
if kind == "sqlite":
    from timerctl.stores.sqlite import SqliteStore
    store = SqliteStore(where)
else:
    from pymongo import MongoClient
    from timerctl.stores.mongo import MongoStore
    store = MongoStore(MongoClient(where, serverSelectionTimeoutMS=5000), database)
print("ready", flush=True)
sys.stdin.readline()
claimed = []
while batch := store.claim_due(owner, now, now, now + timedelta(hours=1), 7):
    claimed += [t.timer_id for t in batch]
store.close()
print(json.dumps(claimed), flush=True)
"""


@pytest.fixture(params=["sqlite", "mongo"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str, Store]]:
    """(kind, where, database, store) for a backing store that separate processes can open too."""
    if request.param == "sqlite":
        where = str(tmp_path / "timers.db")
        sqlite = SqliteStore(where)
        yield "sqlite", where, "", sqlite
        sqlite.close()
        return
    uri = _mongo_uri()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    name = f"timerctl_test_{uuid.uuid4().hex[:12]}"
    try:
        yield "mongo", uri, name, MongoStore(client, name)
    finally:
        client.drop_database(name)
        client.close()


def test_concurrent_runners_claim_every_timer_exactly_once(shared_backend: tuple[str, str, str, Store]) -> None:
    kind, where, database, store = shared_backend
    timers = [make(f"t{i:04d}", T0 - i * MS) for i in range(1000)]
    assert store.insert_many(timers) == len(timers)
    runners = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, kind, where, database, f"runner-{n}", T0.isoformat()],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    try:
        # A barrier: every runner has its store open before any is told to start claiming.
        for runner in runners:
            assert runner.stdout is not None
            assert runner.stdout.readline().strip() == "ready"
        for runner in runners:
            assert runner.stdin is not None
            runner.stdin.write("go\n")
            runner.stdin.flush()
        claims: list[list[str]] = []
        for runner in runners:
            out, _ = runner.communicate(timeout=90)
            assert runner.returncode == 0
            claims.append(json.loads(out))
    finally:
        for runner in runners:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    every = [timer_id for claim in claims for timer_id in claim]
    assert len(every) == len(timers)
    assert set(every) == {t.timer_id for t in timers}
    owner_of = {t.timer_id: t.lease_owner for t in store.find(limit=len(timers))}
    for n, claim in enumerate(claims):
        assert {owner_of[timer_id] for timer_id in claim} <= {f"runner-{n}"}
    assert store.counts()[Status.RUNNING] == len(timers)


# --- MongoStore specifics --------------------------------------------------------------------------


def test_mongo_unreachable_server_raises_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable) as info:
        MongoStore.from_uri("mongodb://127.0.0.1:1/timerctl_unreachable", timeout=0.3)
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "\n" not in message and len(message) < 300


def test_mongo_invalid_uri_is_invalid_input_without_the_password() -> None:
    with pytest.raises(InvalidInput) as info:
        MongoStore.from_uri("mongodb://ops:s3cret@db.example.com:notaport/timers")
    assert "s3cret" not in str(info.value)
    assert "mongodb://host" in str(info.value)


@pytest.mark.parametrize(
    ("uri", "database"),
    [("mongodb://db.example.com:27017/ops?w=majority", "ops"), ("mongodb://db.example.com", "timerctl")],
)
def test_mongo_from_uri_takes_the_database_from_the_path(
    monkeypatch: pytest.MonkeyPatch, uri: str, database: str
) -> None:
    clients: list[Any] = []

    def fake_client(*args: Any, **kwargs: Any) -> Any:
        clients.append(mongomock.MongoClient(*args, **kwargs))
        return clients[-1]

    monkeypatch.setattr(mongo_module, "MongoClient", fake_client)
    store = MongoStore.from_uri(uri)
    assert store.database == database
    store.insert(make("a"))
    assert clients[0][database]["timers"].count_documents({"timerId": "a"}) == 1
    store.close()


def test_mongo_indexes_serve_ids_claims_leases_and_renewals() -> None:
    store = MongoStore(mongomock.MongoClient(), "timerctl_idx")
    info = store._timers.index_information()
    keys = {tuple(k for k, _ in spec["key"]): spec for spec in info.values()}
    assert keys[("timerId",)].get("unique") is True
    assert ("status", "dueAt") in keys
    assert ("status", "leaseUntil") in keys
    assert keys[("leaseOwner",)]["partialFilterExpression"] == {"status": "Running"}


def _index_names(plan: Any) -> set[str]:
    """Every ``indexName`` in an explain() answer (its shape differs between server versions)."""
    if isinstance(plan, dict):
        found = {plan["indexName"]} if isinstance(plan.get("indexName"), str) else set()
        return found.union(*(_index_names(v) for v in plan.values()))
    if isinstance(plan, list):
        return set().union(*(_index_names(v) for v in plan))
    return set()


def test_mongo_renew_is_served_by_the_lease_owner_index() -> None:
    """Real server only: mongomock has no query planner, so only a server can say which index it uses."""
    with _mongo_store("mongo") as store:
        store.insert_many([make(f"t{i}") for i in range(50)])
        store.claim_due("r1", T0, T0, T0 + 30 * SEC, 5)
        assert len(store.renew("r1", T0 + 60 * SEC)) == 5
        plan = store._timers.find({"status": "Running", "leaseOwner": "r1"}).explain()
        assert "leaseOwner_1" in _index_names(plan["queryPlanner"]["winningPlan"]), plan


def test_mongo_swap_matches_a_document_without_attempts(mongo_store: MongoStore) -> None:
    """Another tool may leave ``attempts`` out; it reads as 0, so the compare-and-set must match it too."""
    mongo_store.insert(make("a"))
    mongo_store._timers.update_one({"timerId": "a"}, {"$unset": {"attempts": ""}})
    assert mongo_store.get("a") == make("a")
    assert mongo_store.cancel("a") == model.cancel(make("a"))
    assert mongo_store.get("a") == model.cancel(make("a"))


def test_sqlite_renew_is_served_by_the_lease_owner_index(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "timers.db"))
    with sqlite3.connect(store.path) as db:
        plan = db.execute(f"EXPLAIN QUERY PLAN {_RENEW}", (0, "r1")).fetchall()
    store.close()
    assert [row[-1] for row in plan] == ["SEARCH timers USING INDEX timers_owner (lease_owner=?)"]


def test_mongo_accepts_a_database_as_well_as_a_client() -> None:
    db: Any = mongomock.MongoClient()["given_db"]
    store = MongoStore(db)
    store.insert(make("a"))
    assert store.database == "given_db"
    assert db["timers"].count_documents({}) == 1


def test_mongo_connection_loss_mid_operation_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MongoStore(mongomock.MongoClient(), "timerctl_lost")

    def lost(*args: Any, **kwargs: Any) -> None:
        raise NetworkTimeout("db.example.com:27017: timed out\nsecond line")

    monkeypatch.setattr(store._timers, "find_one", lost)
    with pytest.raises(BackendUnavailable, match=r"^MongoDB store timerctl_lost is unavailable: .*timed out$"):
        store.get("a")


def test_mongo_ping_without_a_server_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MongoStore(mongomock.MongoClient(), "timerctl_ping")

    def no_server(*args: Any, **kwargs: Any) -> None:
        raise ServerSelectionTimeoutError("db.example.com:27017: [Errno 111] Connection refused, Timeout: 5s")

    monkeypatch.setattr(store._db, "command", no_server)
    with pytest.raises(BackendUnavailable, match=r"timerctl_ping is unavailable: .*Connection refused$"):
        store.ping()


def test_sqlite_ping_on_a_closed_store_is_backend_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "timers.db"))
    store.close()
    with pytest.raises(BackendUnavailable, match=r"timers\.db"):
        store.ping()


def test_mongo_refused_credentials_are_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MongoStore(mongomock.MongoClient(), "timerctl_auth")

    def refused(*args: Any, **kwargs: Any) -> None:
        raise OperationFailure("Authentication failed.", code=18)

    monkeypatch.setattr(store._timers, "find_one", refused)
    with pytest.raises(BackendUnavailable, match=r"^MongoDB store timerctl_auth refused access: Authentication"):
        store.get("a")

"""The Store contract, written once and run against every backend.

``store`` is parametrized over SQLite (a temporary file), MongoStore on mongomock, and MongoStore on a
real server when ``TIMERCTL_TEST_MONGO_URI`` is set (each test gets its own database, dropped after; the
fixture is ``tests/fixtures_stores.py``'s). The logic written once in ``stores/base.py`` (``modify``,
``cancel``) is run the same way in ``test_store_base.py``, corrupt rows in ``test_store_rows.py``, and what
only one backend does in ``test_sqlite_store.py`` and ``test_mongo_store.py``.

A timer's life in a store: ``claim_due`` leases it to a runner without changing its status, ``start``
commits the runner to its POST (Running), ``complete`` records the attempt (Finished, Failed or Retrying,
with the attempt kept in its history), ``purge`` deletes it once it has ended long enough ago.
All instants are fixed; nothing here reads the clock or sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.factories import make_timer
from tests.fixtures_stores import (
    MS,
    SEC,
    T0,
    every_backend,  # noqa: F401 (the fixture `store` here: every backend)
    ids,
    make,
    mongo_uri,
)
from timerctl import changes
from timerctl.attempts import MAX_DELIVERIES_KEPT, Delivery, Outcome
from timerctl.changes import Update
from timerctl.model import Conflict, Status, Timer
from timerctl.stores.base import Store
from timerctl.stores.mongo import MongoStore
from timerctl.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
MINUTE = timedelta(minutes=1)
HOOK = "https://ops.example.com/failed"


def claim(
    store: Store, owner: str = "r1", now: datetime = T0, until: datetime | None = None, lease: timedelta = 30 * SEC
) -> list[Timer]:
    """What ``owner`` claims at ``now`` (due by ``until``, default ``now``) with a lease of ``lease``."""
    return store.claim_due(owner, now, now if until is None else until, now + lease, 100)


def claim_and_start(store: Store, owner: str = "r1", now: datetime = T0, lease: timedelta = 30 * SEC) -> list[Timer]:
    """What ``owner`` claims at ``now``, each committed to its POST: what a runner does at the instant.

    ``start`` answers the ids in no particular order; ``claim_due`` soonest due first, then by id on a tie.
    """
    claimed = claim(store, owner, now, lease=lease)
    assert sorted(store.start(owner, claimed)) == sorted(ids(claimed))
    return claimed


def attempt(n: int, code: int | None = 500, at: datetime = T0) -> Delivery:
    """Attempt ``n`` as a runner records it: answered ``code`` (None: no answer) after 12 ms."""
    error = None if code is not None and code < 300 else (f"HTTP {code}" if code else "timed out after 10s")
    return Delivery(n, at, 12, code, error, "busy" if code else None)


def state(store: Store, timer_id: str) -> tuple[Status, str | None, datetime | None]:
    got = store.get(timer_id)
    assert got is not None
    return got.status, got.lease_owner, got.lease_until


# --- insert / get ---------------------------------------------------------------------------------


def test_insert_returns_the_stored_copy_and_that_it_is_new(store: Store) -> None:
    timer = make("a", payload={"k": 1})
    assert store.insert(timer) == (timer, True)
    assert store.get("a") == timer


def test_insert_first_write_wins(store: Store) -> None:
    first = make("a")
    second = make_timer("a", T0 + SEC, url="https://other.example.com/x", created_at=T0, payload="other")
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
    newer_a = make_timer("a", T0 + SEC, url="https://other.example.com/a", created_at=T0)
    assert store.insert_many([newer_a, make("b"), make("c")]) == 2
    assert store.get("a") == original
    assert ids(store.find()) == ["a", "b", "c"]
    assert store.insert_many([make("a"), make("b")]) == 0
    assert store.insert_many([]) == 0


def test_insert_many_keeps_the_first_of_repeats_within_a_batch(store: Store) -> None:
    first, repeat = make("d"), make_timer("d", T0 + SEC, url="https://other.example.com/d", created_at=T0)
    assert store.insert_many([first, repeat]) == 1
    assert store.get("d") == first


def test_get_missing_is_none(store: Store) -> None:
    assert store.get("nope") is None


def test_every_field_round_trips_at_millisecond_precision(store: Store) -> None:
    timer = make_timer(
        "full.1:x-y_z",
        T0 + 123 * MS,
        url="https://hooks.example.com/p?q=1&r=%C3%A9",
        created_at=T0 - timedelta(hours=1) + 7 * MS,
        status=Status.RUNNING,
        payload={"order": {"id": 42, "lines": [1, 2.5, None, True]}, "note": "héllo ✓ 日本語 😀"},
        attempts=3,
        fired_at=T0 + 5 * SEC + 999 * MS,
        last_error="HTTP 503 from hooks.example.com: «busy»",
        due_at=T0 + 10 * SEC + MS,
        lease_owner="runner-1",
        lease_until=T0 + 40 * SEC + 500 * MS,
        revision=7,
        ended_at=T0 + 11 * SEC + 3 * MS,
        delivery_count=41,
        on_failure_url="https://ops.example.com/failed?team=a",
    )
    store.insert(timer)
    got = store.get(timer.timer_id)
    assert got == timer
    assert got is not None
    for instant in (got.expiry_time, got.created_at, got.fired_at, got.due_at, got.lease_until, got.ended_at):
        assert instant is not None and instant.utcoffset() == timedelta(0)


def test_instants_with_other_offsets_are_stored_as_the_same_instant(store: Store) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    at = datetime(2030, 1, 1, 5, 30, 0, 250_000, tzinfo=ist)
    store.insert(make("z", expiry_time=at))  # as given: make would take the expiry to UTC itself
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
    store.insert(make("late", T0 + timedelta(hours=1), status=Status.FINISHED, ended_at=T0 + timedelta(hours=1)))
    store.cancel("c", T0)


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
    store.insert(make("retrying", T0 + SEC, status=Status.RETRYING, due_at=T0 + timedelta(days=1)))
    assert ids(store.find(due_before=T0 + 2 * SEC)) == ["a", "retrying", "tie-a", "tie-b"]
    assert ids(store.find(due_before=T0 + 2 * SEC - MS)) == ["a", "retrying"]
    assert ids(store.find(status=Status.SCHEDULED, due_before=T0 + 3 * SEC, limit=2)) == ["a", "tie-a"]


def test_find_ended_after_is_inclusive_and_on_the_end(store: Store) -> None:
    store.insert_many(
        [
            make("old-fail", T0 - 3 * MINUTE, status=Status.FAILED, ended_at=T0 - SEC),
            make("fail", T0 - 2 * MINUTE, status=Status.FAILED, ended_at=T0),
            make("done", T0 - MINUTE, status=Status.FINISHED, ended_at=T0 + SEC),
            make("pending", T0 - 4 * MINUTE),
        ]
    )
    assert ids(store.find(ended_after=T0)) == ["fail", "done"]
    assert ids(store.find(status=Status.FAILED, ended_after=T0)) == ["fail"]
    assert ids(store.find(status=Status.FAILED, ended_after=T0 + MS)) == []
    assert ids(store.find(ended_after=T0 - SEC, limit=2)) == ["old-fail", "fail"]


def test_find_url_prefix_is_a_literal_prefix(store: Store) -> None:
    prefix = "https://api.example.com/a%b_c.d(e)+[f]*?"
    store.insert_many(
        [
            make("exact", T0, url=prefix),
            make("longer", T0 + SEC, url=prefix + "x=1"),
            make("wild-percent", T0 + 2 * SEC, url="https://api.example.com/aXXb_c.d(e)+[f]*?"),
            make("wild-underscore", T0 + 3 * SEC, url="https://api.example.com/a%bXc.d(e)+[f]*?"),
            make("wild-dot", T0 + 4 * SEC, url="https://api.example.com/a%b_cXd(e)+[f]*?"),
            make("other-case", T0 + 5 * SEC, url="https://API.example.com/a%b_c.d(e)+[f]*?"),
            make("inside", T0 + 6 * SEC, url="https://x.example.com/?u=" + prefix),
        ]
    )
    assert ids(store.find(url_prefix=prefix)) == ["exact", "longer"]
    assert ids(store.find(url_prefix="https://api.example.com/a%")) == [
        "exact",
        "longer",
        "wild-underscore",
        "wild-dot",
    ]
    assert ids(store.find(url_prefix="https://api.example.com/a%b_c.d(e)+[f]*?x", status=Status.SCHEDULED)) == [
        "longer"
    ]
    assert len(store.find(url_prefix="")) == 7, "an empty prefix filters nothing"
    assert store.find(url_prefix="https://api.example.com/a%b_c.d(e)+[f]*?", status=Status.FAILED) == []


# --- claim_due: a lease, not a status ----------------------------------------------------------------


def test_claim_due_takes_only_due_timers_oldest_first(store: Store) -> None:
    lease = T0 + timedelta(minutes=5)
    store.insert(make("later", T0 + timedelta(hours=1)))
    store.insert(make("c", T0 + 2 * SEC))
    store.insert(make("b", T0 + SEC, status=Status.RETRYING, attempts=2, due_at=T0 + SEC))
    store.insert(make("a", T0))
    store.insert(make("done", T0 - SEC, status=Status.FINISHED))
    store.insert(make("retry-later", T0 - SEC, status=Status.RETRYING, attempts=1, due_at=T0 + timedelta(minutes=1)))
    claimed = store.claim_due("r1", T0, T0 + 2 * SEC, lease, 10)
    assert ids(claimed) == ["a", "b", "c"]
    assert [t.status for t in claimed] == [Status.SCHEDULED, Status.RETRYING, Status.SCHEDULED], "no status changes"
    for timer in claimed:
        assert timer.lease_owner == "r1"
        assert timer.lease_until == lease
        assert store.get(timer.timer_id) == timer
    for idle in ("later", "retry-later", "done"):
        got = store.get(idle)
        assert got is not None and got.lease_owner is None


def test_a_claim_changes_nothing_that_get_find_or_counts_show(store: Store) -> None:
    timers = [make("s"), make("r", status=Status.RETRYING, attempts=3)]
    store.insert_many(timers)
    before = store.counts()
    assert ids(claim(store)) == ["r", "s"]
    assert store.counts() == before
    assert ids(store.find(status=Status.SCHEDULED)) == ["s"]
    assert ids(store.find(status=Status.RETRYING)) == ["r"]
    assert store.find(status=Status.RUNNING) == []
    for timer in timers:
        got = store.get(timer.timer_id)
        assert got is not None
        assert replace(got, lease_owner=None, lease_until=None) == timer, "only the lease was written"


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
    store.insert_many([make("a", T0), make("retry", T0, status=Status.RETRYING, attempts=1)])
    claim(store)
    store.insert(make("b", T0 + 31 * SEC))
    now = T0 + 31 * SEC
    claimed = claim(store, "r2", now)
    assert ids(claimed) == ["a", "retry", "b"]
    assert all(t.lease_owner == "r2" and t.lease_until == now + 30 * SEC for t in claimed)
    assert [t.status for t in claimed] == [Status.SCHEDULED, Status.RETRYING, Status.SCHEDULED]


def test_unexpired_lease_is_not_reclaimable(store: Store) -> None:
    store.insert(make("a", T0))
    claim(store)
    assert claim(store, "r2", T0 + 29 * SEC) == []
    # A lease ending exactly now has not expired yet.
    assert claim(store, "r2", T0 + 30 * SEC) == []
    assert state(store, "a") == (Status.SCHEDULED, "r1", T0 + 30 * SEC)


def test_a_lapsed_lease_on_a_timer_not_due_yet_is_not_taken(store: Store) -> None:
    store.insert(make("a", T0 + MINUTE))
    claim(store, until=T0 + MINUTE, lease=10 * SEC)
    assert claim(store, "r2", T0 + 20 * SEC) == [], "lapsed, but not due by until"
    assert ids(claim(store, "r2", T0 + 20 * SEC, until=T0 + MINUTE)) == ["a"]


def test_a_running_timer_without_a_lease_is_reclaimable(store: Store) -> None:
    store.insert_many(
        [
            make("no-lease", T0 + timedelta(hours=1), status=Status.RUNNING),
            make("owner-only", T0 + timedelta(hours=1), status=Status.RUNNING, lease_owner="gone"),
            make("leased", T0 - SEC, status=Status.RUNNING, lease_owner="r0", lease_until=T0 + SEC),
        ]
    )
    claimed = claim(store)
    assert sorted(ids(claimed)) == ["no-lease", "owner-only"]
    assert all(t.lease_owner == "r1" and t.lease_until == T0 + 30 * SEC for t in claimed)
    assert all(t.status is Status.RUNNING for t in claimed), "a POST may have been made: never back to Scheduled"
    assert claim(store, "r2") == []


def test_a_pending_timer_with_an_owner_but_no_lease_end_is_claimable(store: Store) -> None:
    store.insert(make("half", T0, lease_owner="gone"))
    assert ids(claim(store)) == ["half"]
    assert state(store, "half") == (Status.SCHEDULED, "r1", T0 + 30 * SEC)


# --- start: committing to the POST ----------------------------------------------------------------------


def test_start_turns_the_held_timers_running(store: Store) -> None:
    store.insert_many([make("a"), make("r", status=Status.RETRYING, attempts=2), make("idle", T0 + MINUTE)])
    claimed = claim(store)
    assert sorted(store.start("r1", claimed)) == ["a", "r"]
    for timer_id in ("a", "r"):
        assert state(store, timer_id) == (Status.RUNNING, "r1", T0 + 30 * SEC)
    assert store.counts()[Status.RUNNING] == 2
    assert store.start("r1", []) == []
    assert store.start("r1", [make("idle", T0 + MINUTE)]) == [], "not leased: not started"


def test_start_refuses_what_another_owner_holds(store: Store) -> None:
    store.insert(make("a"))
    claimed = claim(store)
    assert store.start("r2", claimed) == []
    assert state(store, "a") == (Status.SCHEDULED, "r1", T0 + 30 * SEC)
    # Taken over once the lease lapsed: the first runner's start is refused, the new owner's is not.
    now = T0 + 31 * SEC
    taken = claim(store, "r2", now)
    assert store.start("r1", claimed) == []
    assert store.start("r2", taken) == ["a"]
    assert state(store, "a") == (Status.RUNNING, "r2", now + 30 * SEC)


def test_a_claimed_timer_can_be_cancelled_and_is_then_never_started(store: Store) -> None:
    store.insert_many([make("a"), make("r", status=Status.RETRYING, attempts=2, last_error="HTTP 503")])
    claimed = claim(store)
    for timer in claimed:
        done = store.cancel(timer.timer_id, T0 - 100 * MS)
        assert done == changes.cancel(timer, T0 - 100 * MS)
        assert (done.status, done.lease_owner, done.lease_until) == (Status.CANCELLED, None, None)
        assert (done.revision, done.ended_at) == (1, T0 - 100 * MS)
        assert store.get(timer.timer_id) == done
    assert store.start("r1", claimed) == [], "the runner holding them drops them"
    assert {t.status for t in store.find()} == {Status.CANCELLED}
    assert claim(store, "r2", T0 + MINUTE) == []


def test_start_refuses_a_timer_changed_since_its_claim(store: Store) -> None:
    store.insert(make("a", T0))
    claimed = claim(store)
    moved = store.modify("a", lambda t: changes.update(t, Update(expiry_time=T0 + SEC)))
    assert (moved.revision, moved.lease_owner, moved.due_at) == (1, None, T0 + SEC)
    assert store.start("r1", claimed) == [], "the claimed copy is revision 0"
    assert state(store, "a") == (Status.SCHEDULED, None, None)
    [again] = claim(store, until=T0 + SEC)
    assert (again.revision, again.due_at) == (1, T0 + SEC)
    assert store.start("r1", [again]) == ["a"]
    assert state(store, "a")[0] is Status.RUNNING


def test_a_started_timer_cannot_be_cancelled_because_its_post_started(store: Store) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    before = store.get("a")
    with pytest.raises(Conflict, match=r"^timer a cannot be cancelled: its POST has already started"):
        store.cancel("a", T0)
    assert store.get("a") == before


def test_a_started_timer_whose_runner_died_is_taken_over_still_running(store: Store) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    now = T0 + 31 * SEC
    [taken] = claim(store, "r2", now)
    assert (taken.status, taken.lease_owner) == (Status.RUNNING, "r2")
    assert store.start("r2", [taken]) == ["a"], "Running stays Running under its new owner"
    assert store.complete("r1", [Outcome("a", Status.FINISHED, 1, fired_at=T0, ended_at=T0)]) == []
    assert store.complete("r2", [Outcome("a", Status.FINISHED, 1, fired_at=now, ended_at=now)]) == ["a"]


# --- renew / release -------------------------------------------------------------------------------


def test_renew_extends_every_lease_its_owner_holds_and_no_other(store: Store) -> None:
    store.insert_many([make("a"), make("b"), make("c", T0 + SEC), make("idle", T0 + timedelta(hours=1))])
    assert ids(claim(store)) == ["a", "b"]
    assert store.start("r1", [t for t in store.find() if t.timer_id == "b"]) == ["b"]
    assert ids(claim(store, "r2", T0 + SEC)) == ["c"]
    assert store.renew("r1", T0 + 90 * SEC) == {"a", "b"}
    assert state(store, "a") == (Status.SCHEDULED, "r1", T0 + 90 * SEC)
    assert state(store, "b") == (Status.RUNNING, "r1", T0 + 90 * SEC)
    assert state(store, "c") == (Status.SCHEDULED, "r2", T0 + 31 * SEC)
    assert store.get("idle") == make("idle", T0 + timedelta(hours=1))
    assert store.renew("nobody", T0 + 999 * SEC) == set()


def test_renew_ending_before_renews_only_the_leases_ending_soon(store: Store) -> None:
    store.insert_many([make("soon", T0), make("later", T0 + 20 * SEC), make("theirs", T0)])
    assert ids(store.claim_due("r1", T0, T0, T0 + 10 * SEC, 1)) == ["soon"]
    assert ids(store.claim_due("r2", T0, T0, T0 + 10 * SEC, 1)) == ["theirs"]
    assert ids(store.claim_due("r1", T0 + 5 * SEC, T0 + 20 * SEC, T0 + 50 * SEC, 10)) == ["later"]
    assert store.renew("r1", T0 + 60 * SEC, ending_before=T0 + 30 * SEC) == {"soon"}
    assert state(store, "soon")[2] == T0 + 60 * SEC
    assert state(store, "later")[2] == T0 + 50 * SEC, "a lease ending after ending_before is left alone"
    assert state(store, "theirs")[2] == T0 + 10 * SEC
    assert store.renew("r1", T0 + 70 * SEC, ending_before=T0 + 50 * SEC) == set(), "ending_before is exclusive"
    assert store.renew("r1", T0 + 70 * SEC, ending_before=T0 + 50 * SEC + MS) == {"later"}


def test_renew_leaves_out_what_its_owner_completed_released_or_lost(store: Store) -> None:
    store.insert_many([make("a"), make("b"), make("c"), make("d")])
    claimed = claim(store)
    assert store.start("r1", claimed[:1]) == ["a"]
    assert store.complete("r1", [Outcome("a", Status.FINISHED, 1, fired_at=T0, ended_at=T0)]) == ["a"]
    assert store.release("r1", ["b"]) == 1
    store.cancel("d", T0)
    assert store.renew("r1", T0 + 90 * SEC) == {"c"}
    assert state(store, "a") == (Status.FINISHED, None, None)
    assert state(store, "b") == (Status.SCHEDULED, None, None)
    assert state(store, "d") == (Status.CANCELLED, None, None)


def test_renew_after_takeover_reports_the_lease_lost(store: Store) -> None:
    store.insert_many([make("a"), make("b", T0 + 10 * SEC)])
    claim(store)
    claim(store, now=T0 + 10 * SEC)
    now = T0 + 31 * SEC
    assert ids(claim(store, "r2", now)) == ["a"]
    held = {"a", "b"}
    kept = store.renew("r1", now + 60 * SEC)
    assert kept == {"b"} and held - kept == {"a"}, "what a runner compares to find its lost leases"
    assert state(store, "a") == (Status.SCHEDULED, "r2", now + 30 * SEC)


def test_release_hands_timers_back_only_for_their_owner(store: Store) -> None:
    store.insert_many([make("a"), make("b")])
    claim(store)
    assert store.release("r2", ["a", "b"]) == 0
    assert {t.lease_owner for t in store.find()} == {"r1"}
    assert store.release("r1", ["a", "missing"]) == 1
    got = store.get("a")
    assert got is not None
    assert (got.status, got.lease_owner, got.lease_until, got.due_at) == (Status.SCHEDULED, None, None, T0)
    assert store.release("r1", ["a"]) == 0
    assert store.release("r1", []) == 0
    assert state(store, "b") == (Status.SCHEDULED, "r1", T0 + 30 * SEC)
    assert ids(claim(store, "r2")) == ["a"]


def test_release_of_a_started_timer_returns_it_to_the_status_it_had(store: Store) -> None:
    store.insert_many(
        [
            make("first", T0),
            make("again", T0, status=Status.RETRYING, attempts=2, last_error="HTTP 502"),
            make("claimed", T0, status=Status.RETRYING, attempts=1),
        ]
    )
    claimed = claim(store)
    assert sorted(store.start("r1", [t for t in claimed if t.timer_id != "claimed"])) == ["again", "first"]
    assert store.release("r1", ["first", "again", "claimed"]) == 3
    assert state(store, "first") == (Status.SCHEDULED, None, None)
    assert state(store, "again") == (Status.RETRYING, None, None)
    assert state(store, "claimed") == (Status.RETRYING, None, None)
    again = store.get("again")
    assert again is not None and (again.attempts, again.last_error, again.due_at) == (2, "HTTP 502", T0)
    assert ids(claim(store, "r2")) == ["again", "claimed", "first"]


def test_release_leaves_ended_timers_alone(store: Store) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    store.complete("r1", [Outcome("a", Status.FAILED, 1, last_error="HTTP 410", ended_at=T0)])
    assert store.release("r1", ["a"]) == 0
    assert state(store, "a") == (Status.FAILED, None, None)


# --- complete --------------------------------------------------------------------------------------


def test_complete_records_finished_failed_and_retrying(store: Store) -> None:
    store.insert_many([make("ok"), make("gave-up"), make("retry"), make("keep-due")])
    claimed = {t.timer_id: t for t in claim_and_start(store)}
    outcomes = [
        Outcome("ok", Status.FINISHED, 1, fired_at=T0 + 250 * MS, ended_at=T0 + 300 * MS, delivery=attempt(1, 200)),
        Outcome("gave-up", Status.FAILED, 8, last_error="HTTP 500 after 8 attempts", ended_at=T0 + SEC),
        Outcome("retry", Status.RETRYING, 1, last_error="timeout", due_at=T0 + 60 * SEC, delivery=attempt(1, None)),
        Outcome("keep-due", Status.RETRYING, 2, last_error="HTTP 502"),
    ]
    assert store.complete("r1", outcomes) == ["ok", "gave-up", "retry", "keep-due"]

    # What is stored is the model's own rule for an outcome, on every backend.
    started = {tid: timer.move(Status.RUNNING) for tid, timer in claimed.items()}
    assert [store.get(o.timer_id) for o in outcomes] == [o.apply(started[o.timer_id]) for o in outcomes]
    ok, failed, retry, keep = (store.get(i) for i in ("ok", "gave-up", "retry", "keep-due"))
    assert ok == make(
        "ok", status=Status.FINISHED, attempts=1, fired_at=T0 + 250 * MS, ended_at=T0 + 300 * MS, delivery_count=1
    )
    assert failed == make(
        "gave-up", status=Status.FAILED, attempts=8, last_error="HTTP 500 after 8 attempts", ended_at=T0 + SEC
    )
    assert retry == make(
        "retry", status=Status.RETRYING, attempts=1, last_error="timeout", due_at=T0 + 60 * SEC, delivery_count=1
    )
    assert keep == make("keep-due", status=Status.RETRYING, attempts=2, last_error="HTTP 502")
    assert store.counts()[Status.RETRYING] == 2
    # The retry is due again at its new time, not before; a retry without a due_at keeps the old one.
    assert ids(claim(store, "r2", T0 + 59 * SEC)) == ["keep-due"]
    assert ids(claim(store, "r2", T0 + 60 * SEC)) == ["retry"]


def test_complete_keeps_the_last_attempts_in_order_and_counts_every_one(store: Store) -> None:
    store.insert(make("a", on_failure_url=None))
    assert store.deliveries("a") == []
    recorded: list[Delivery] = []
    now = T0
    for n in range(1, 26):
        claim_and_start(store, now=now)
        recorded.append(attempt(n, 500 if n < 25 else None, at=now))
        if n < 25:
            outcome = Outcome("a", Status.RETRYING, n, last_error="HTTP 500", due_at=now + SEC, delivery=recorded[-1])
        else:
            outcome = Outcome("a", Status.FAILED, n, last_error="timed out", ended_at=now, delivery=recorded[-1])
        assert store.complete("r1", [outcome]) == ["a"]
        now += SEC
    kept = store.deliveries("a")
    assert len(kept) == MAX_DELIVERIES_KEPT
    assert kept == recorded[-MAX_DELIVERIES_KEPT:], "the most recent, oldest first, every field kept"
    assert [d.attempt for d in kept] == list(range(6, 26))
    got = store.get("a")
    assert got is not None and (got.status, got.attempts, got.delivery_count) == (Status.FAILED, 25, 25)
    assert store.deliveries("missing") == []


def test_an_outcome_without_an_attempt_adds_nothing_to_the_history(store: Store) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    store.complete("r1", [Outcome("a", Status.RETRYING, 1, last_error="x", due_at=T0 + SEC, delivery=attempt(1))])
    claim_and_start(store, now=T0 + SEC)
    store.complete("r1", [Outcome("a", Status.FAILED, 1, last_error="gave up", ended_at=T0 + SEC)])
    assert store.deliveries("a") == [attempt(1)]
    got = store.get("a")
    assert got is not None and got.delivery_count == 1


def test_complete_ignores_a_stale_owner_after_takeover(store: Store) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    now = T0 + 31 * SEC
    claim_and_start(store, "r2", now)
    stale = Outcome("a", Status.FINISHED, attempts=1, fired_at=now, ended_at=now, delivery=attempt(1, 200))
    assert store.complete("r1", [stale]) == []
    got = store.get("a")
    assert got is not None
    assert (got.status, got.lease_owner, got.attempts, got.fired_at) == (Status.RUNNING, "r2", 0, None)
    assert store.deliveries("a") == [], "a stale outcome's attempt is not recorded either"
    failed = Outcome("a", Status.FAILED, attempts=1, last_error="HTTP 410", ended_at=now)
    assert store.complete("r2", [failed]) == ["a"]
    got = store.get("a")
    assert got is not None and got.status is Status.FAILED and got.last_error == "HTTP 410"
    assert store.complete("r2", [failed]) == []


@pytest.mark.parametrize("status", [Status.RUNNING, Status.CANCELLED, Status.SCHEDULED])
def test_complete_refuses_an_outcome_a_runner_cannot_record(store: Store, status: Status) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    with pytest.raises(ValueError, match=f"outcome of a is {status.value}; expected Failed, Finished, Retrying"):
        store.complete("r1", [Outcome("a", Status.FINISHED, 1, fired_at=T0), Outcome("a", status, 1)])
    assert state(store, "a") == (Status.RUNNING, "r1", T0 + 30 * SEC), "nothing of the batch written"


def test_complete_ignores_timers_not_started(store: Store) -> None:
    store.insert_many([make("sched"), make("gone"), make("claimed")])
    store.cancel("gone", T0)
    assert ids(claim(store)) == ["claimed", "sched"]
    store.release("r1", ["sched"])
    outcomes = [Outcome(i, Status.FINISHED, 1, delivery=attempt(1, 200)) for i in ("sched", "gone", "claimed")]
    assert store.complete("r1", [*outcomes, Outcome("missing", Status.FINISHED, 1)]) == []
    assert {t.timer_id: t.status for t in store.find()} == {
        "sched": Status.SCHEDULED,
        "gone": Status.CANCELLED,
        "claimed": Status.SCHEDULED,
    }
    assert all(store.deliveries(i) == [] for i in ("sched", "gone", "claimed"))


# --- changes a person makes, through modify ------------------------------------------------------------


def test_update_and_fire_now_bump_the_revision_and_drop_the_lease(store: Store) -> None:
    store.insert(make("a", T0 + MINUTE, payload={"v": 1}))
    claim(store, until=T0 + MINUTE)
    change = Update(expiry_time=T0 + 2 * MINUTE, payload={"v": 2}, webhook_url="https://new.example.com/a")
    updated = store.modify("a", lambda t: changes.update(t, change))
    assert (updated.revision, updated.lease_owner, updated.lease_until) == (1, None, None)
    assert (updated.expiry_time, updated.due_at, updated.payload) == (T0 + 2 * MINUTE, T0 + 2 * MINUTE, {"v": 2})
    assert updated.webhook_url == "https://new.example.com/a" and updated.status is Status.SCHEDULED
    assert store.get("a") == updated
    assert store.modify("a", lambda t: changes.update(t, change)) == updated, "the same update again: no change"

    claim(store, until=T0 + 2 * MINUTE)
    fired = store.modify("a", lambda t: changes.fire_now(t, T0))
    assert (fired.revision, fired.lease_owner, fired.due_at, fired.expiry_time) == (2, None, T0, T0 + 2 * MINUTE)
    assert store.get("a") == fired
    [due] = claim(store)
    assert (due.timer_id, due.revision) == ("a", 2)


def test_retry_moves_a_failed_timer_back_with_its_history(store: Store) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    failed = Outcome("a", Status.FAILED, 1, last_error="HTTP 500", ended_at=T0 + SEC, delivery=attempt(1))
    store.complete("r1", [failed])
    retried = store.modify("a", lambda t: changes.retry(t, T0 + MINUTE))
    assert (retried.status, retried.attempts, retried.ended_at, retried.due_at) == (
        Status.SCHEDULED,
        0,
        None,
        T0 + MINUTE,
    )
    assert (retried.revision, retried.delivery_count) == (1, 1)
    assert store.find(status=Status.FAILED) == []
    claim_and_start(store, now=T0 + MINUTE)
    done = Outcome("a", Status.FINISHED, 1, fired_at=T0 + MINUTE, ended_at=T0 + MINUTE, delivery=attempt(1, 200))
    assert store.complete("r1", [done]) == ["a"]
    assert [d.status_code for d in store.deliveries("a")] == [500, 200]
    got = store.get("a")
    assert got is not None and (got.status, got.delivery_count) == (Status.FINISHED, 2)


# --- failure callbacks -----------------------------------------------------------------------------------


def _fail(timer_id: str, now: datetime, n: int = 1, hook: str | None = HOOK) -> Outcome:
    """Attempt ``n`` of ``timer_id`` failed at ``now`` and was its last: the timer ends Failed."""
    return Outcome(
        timer_id,
        Status.FAILED,
        n,
        last_error="HTTP 500",
        ended_at=now,
        delivery=attempt(n, at=now),
        on_failure_url=hook,
    )


def callbacks(store: Store) -> list[Timer]:
    return [t for t in store.find(limit=1000) if t.timer_id.startswith("on-failure-")]


def test_a_failed_outcome_spawns_its_failure_callback_once(store: Store) -> None:
    store.insert_many([make("a", on_failure_url=HOOK), make("done", on_failure_url=HOOK), make("quiet")])
    claim_and_start(store)
    outcome = _fail("a", T0 + SEC)
    finished = Outcome("done", Status.FINISHED, 1, fired_at=T0, ended_at=T0, on_failure_url=HOOK)
    assert store.complete("r1", [outcome, finished, _fail("quiet", T0 + SEC, hook=None)]) == [
        "a",
        "done",
        "quiet",
    ]
    assert store.complete("r1", [outcome]) == [], "recorded twice: the second write finds nothing to record"
    [callback] = callbacks(store)
    failed = store.get("a")
    assert failed is not None
    assert callback == changes.failure_callback(failed, store.deliveries("a"), T0 + SEC)
    assert (callback.webhook_url, callback.status, callback.due_at) == (HOOK, Status.SCHEDULED, T0 + SEC)
    assert callback.on_failure_url is None, "a callback has no callback: never recursive"
    assert callback.payload["timer"]["timerId"] == "a"
    assert callback.payload["deliveries"] == [attempt(1, at=T0 + SEC).to_json()]


def test_a_failure_recorded_whose_answer_was_lost_still_gets_its_callback(store: Store) -> None:
    """A runner whose write landed but whose answer was lost writes again: the callback comes then, once."""
    store.insert(make("a", on_failure_url=HOOK))
    claim_and_start(store)
    outcome = _fail("a", T0 + SEC)
    assert isinstance(store, SqliteStore | MongoStore)
    assert store._complete("r1", [outcome]) == ["a"]  # the write alone, as if the answer never came
    assert callbacks(store) == []
    assert store.complete("r1", [outcome]) == []
    assert len(callbacks(store)) == 1
    assert store.complete("r1", [outcome]) == []
    assert len(callbacks(store)) == 1


def test_a_timer_retried_by_hand_that_fails_again_gets_another_callback(store: Store) -> None:
    store.insert(make("a", on_failure_url=HOOK))
    claim_and_start(store)
    store.complete("r1", [_fail("a", T0)])
    store.modify("a", lambda t: changes.retry(t, T0 + MINUTE))
    claim_and_start(store, now=T0 + MINUTE)
    store.complete("r1", [_fail("a", T0 + MINUTE)])
    spawned = callbacks(store)
    assert len(spawned) == 2 and len({t.timer_id for t in spawned}) == 2
    assert [len(t.payload["deliveries"]) for t in spawned] == [1, 2]


# --- purge -----------------------------------------------------------------------------------------


def test_purge_deletes_ended_timers_in_batches(store: Store) -> None:
    cutoff = T0 - 30 * SEC
    store.insert_many(
        [
            *(make(f"f{k}", T0 - k * MINUTE, status=Status.FINISHED, ended_at=T0 - k * MINUTE) for k in range(1, 6)),
            make("edge", T0, status=Status.FINISHED, ended_at=cutoff),
            make("fresh", T0, status=Status.FINISHED, ended_at=T0),
            make("c", T0 - MINUTE, status=Status.CANCELLED, ended_at=T0 - MINUTE),
            make("x", T0 - MINUTE, status=Status.FAILED, ended_at=T0 - MINUTE),
            make("s", T0 - timedelta(days=9)),
            make("r", T0 - timedelta(days=9), status=Status.RETRYING, attempts=3),
        ]
    )
    ended = [Status.FINISHED, Status.CANCELLED]
    assert store.purgeable(ended, cutoff) == 6, "ended_before is exclusive: 'edge' is kept"
    assert store.purgeable([Status.FAILED], cutoff) == 1
    assert store.purge(ended, cutoff, 4) == 4
    assert store.purgeable(ended, cutoff) == 2
    assert store.purge(ended, cutoff, 4) == 2
    assert store.purge(ended, cutoff, 4) == 0
    assert sorted(ids(store.find())) == ["edge", "fresh", "r", "s", "x"]
    assert store.purge([Status.FAILED], cutoff, 0) == 0 and store.purge([], cutoff, 10) == 0
    assert store.purgeable([], cutoff) == 0
    assert store.purge([Status.FAILED, Status.FAILED], cutoff, 10) == 1
    assert sorted(ids(store.find())) == ["edge", "fresh", "r", "s"]


@pytest.mark.parametrize("status", [Status.SCHEDULED, Status.RETRYING, Status.RUNNING])
def test_purge_refuses_a_status_not_ended(store: Store, status: Status) -> None:
    store.insert(make("a", T0 - timedelta(days=9), status=status))
    with pytest.raises(ValueError, match=f"only ended timers can be purged, not {status.value} ones"):
        store.purge([Status.FINISHED, status], T0, 10)
    with pytest.raises(ValueError, match=status.value):
        store.purgeable([status], T0)
    assert ids(store.find()) == ["a"]


def test_a_purged_timer_takes_its_history_with_it_and_its_id_is_free_again(store: Store) -> None:
    store.insert(make("a"))
    claim_and_start(store)
    store.complete("r1", [Outcome("a", Status.FINISHED, 1, fired_at=T0, ended_at=T0, delivery=attempt(1, 200))])
    assert len(store.deliveries("a")) == 1
    assert store.purge([Status.FINISHED], T0 + MS, 10) == 1
    assert store.get("a") is None and store.deliveries("a") == []
    again = make("a", T0 + MINUTE, payload="second life")
    assert store.insert(again) == (again, True)
    claim_and_start(store, now=T0 + MINUTE)
    store.complete("r1", [Outcome("a", Status.RETRYING, 1, due_at=T0 + 2 * MINUTE, delivery=attempt(1, 503))])
    assert [d.status_code for d in store.deliveries("a")] == [503], "nothing of the first timer's history"
    got = store.get("a")
    assert got is not None and got.delivery_count == 1


# --- counts / ping ---------------------------------------------------------------------------------


def test_counts_cover_every_status(store: Store) -> None:
    assert store.counts() == dict.fromkeys(Status, 0)
    store.insert_many([make("s1"), make("s2"), make("r", status=Status.RUNNING)])
    store.insert_many([make("f", status=Status.FINISHED), make("x", status=Status.FAILED)])
    store.insert(make("again", status=Status.RETRYING, attempts=1))
    store.cancel("s2", T0)
    assert store.counts() == {
        Status.SCHEDULED: 1,
        Status.RUNNING: 1,
        Status.RETRYING: 1,
        Status.FINISHED: 1,
        Status.FAILED: 1,
        Status.CANCELLED: 1,
    }


def test_ping_returns_while_the_backend_answers(store: Store) -> None:
    assert store.ping() is None  # no BackendUnavailable (its raising: test_sqlite_store, test_mongo_store)
    store.insert(make("a"))
    assert store.ping() is None
    assert store.get("a") == make("a")


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
    uri = mongo_uri()
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
    assert store.counts()[Status.SCHEDULED] == len(timers), "leased, still Scheduled"

"""The Store contract, written once and run against every backend.

``store`` is parametrized over SQLite (a temporary file), MongoStore on mongomock, and MongoStore on a
real server when ``TIMERCTL_TEST_MONGO_URI`` is set (each test gets its own database, dropped after; the
fixture is ``tests/fixtures_stores.py``'s). The logic written once in ``stores/base.py`` (``modify``,
``cancel``) is run the same way in ``test_store_base.py``, corrupt rows in ``test_store_rows.py``, and what
only one backend does in ``test_sqlite_store.py`` and ``test_mongo_store.py``.
All instants are fixed; nothing here reads the clock or sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
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
from timerctl.model import Outcome, Status, Timer
from timerctl.stores.base import Store
from timerctl.stores.mongo import MongoStore
from timerctl.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]


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
    store.ping()  # the contract: no BackendUnavailable (its raising: test_sqlite_store, test_mongo_store)
    store.insert(make("a"))
    store.ping()


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
    assert store.counts()[Status.RUNNING] == len(timers)

"""What only MongoStore does: its URI, its indexes, its migration from the first layout, its history inside
each document, its claims and renewals that lose races, and its errors (on mongomock, with failures injected).

The contract every store keeps runs on MongoStore too, in ``test_store_contract.py``; the test here that
needs a real server (which index a query uses: mongomock has no planner) skips without
``TIMERCTL_TEST_MONGO_URI``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import mongomock
import pymongo
import pytest
from pymongo.errors import NetworkTimeout, OperationFailure, ServerSelectionTimeoutError
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from tests.factories import make_timer
from tests.fixtures_stores import (
    MS,
    SEC,
    T0,
    make,
    mongo_backends,  # noqa: F401 (the fixture `mongo_store`)
    mongo_uri,
)
from timerctl import changes
from timerctl.attempts import MAX_DELIVERIES_KEPT, Delivery, Outcome
from timerctl.model import BackendUnavailable, InvalidInput, Status, Timer
from timerctl.stores import mongo as mongo_module
from timerctl.stores.mongo import MongoStore, _doc
from timerctl.stores.mongo_schema import SCHEMA_COLLECTION, SCHEMA_VERSION

MINUTE = timedelta(minutes=1)


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


def test_mongo_indexes_are_named_and_partial_where_they_hold_one_kind_of_timer() -> None:
    store = MongoStore(mongomock.MongoClient(), "timerctl_idx")
    info = store._timers.index_information()
    assert set(info) == {"_id_", "timerId_1", "claim_free", "lease_holder", "expiryTime_1_timerId_1", "ended"}
    assert info["timerId_1"].get("unique") is True
    assert list(info["claim_free"]["key"]) == [("status", 1), ("dueAt", 1)]
    assert info["claim_free"]["partialFilterExpression"] == {"leaseOwner": None}
    assert list(info["lease_holder"]["key"]) == [("leaseOwner", 1), ("leaseUntil", 1)]
    assert info["lease_holder"]["partialFilterExpression"] == {"leaseOwner": {"$type": "string"}}
    assert list(info["ended"]["key"]) == [("status", 1), ("endedAt", 1)]
    assert info["ended"]["partialFilterExpression"] == {"endedAt": {"$type": "date"}}
    assert store._db[SCHEMA_COLLECTION].find_one({"_id": "timers"}) == {"_id": "timers", "version": SCHEMA_VERSION}


def _index_names(plan: Any) -> set[str]:
    """Every ``indexName`` in an explain() answer (its shape differs between server versions)."""
    if isinstance(plan, dict):
        found = {plan["indexName"]} if isinstance(plan.get("indexName"), str) else set()
        return found.union(*(_index_names(v) for v in plan.values()))
    if isinstance(plan, list):
        return set().union(*(_index_names(v) for v in plan))
    return set()


def _stages(plan: Any) -> set[str]:
    """Every ``stage`` in an explain() answer (COLLSCAN is the one a hot query must never have)."""
    if isinstance(plan, dict):
        found = {plan["stage"]} if isinstance(plan.get("stage"), str) else set()
        return found.union(*(_stages(v) for v in plan.values()))
    if isinstance(plan, list):
        return set().union(*(_stages(v) for v in plan))
    return set()


class Recorder(CommandListener):
    """The ``find``, ``update`` and ``delete`` commands a client sends, as sent (to be explained after)."""

    KEPT = ("find", "filter", "sort", "limit", "projection", "update", "updates", "delete", "deletes")

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name in ("find", "update", "delete"):
            self.commands.append({k: v for k, v in event.command.items() if k in self.KEPT})

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


def test_mongo_runner_queries_are_served_by_their_indexes() -> None:
    """Real server only: mongomock has no query planner, so only a server can say which index it uses."""
    recorder = Recorder()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_uri(), serverSelectionTimeoutMS=5000, tz_aware=True, event_listeners=[recorder]
    )
    name = f"timerctl_test_{uuid.uuid4().hex[:12]}"
    try:
        store = MongoStore(client, name)
        store.insert_many([make(f"t{i:03d}", T0 + i * SEC) for i in range(200)])
        store.insert_many([make(f"x{i:03d}", status=Status.FINISHED, ended_at=T0 - SEC) for i in range(50)])
        expected: list[tuple[Callable[[], object], set[str]]] = [
            (lambda: store.claim_due("r1", T0, T0 + 5 * SEC, T0 + 30 * SEC, 5), {"claim_free", "lease_holder"}),
            (lambda: store.renew("r1", T0 + 60 * SEC, T0 + 40 * SEC), {"lease_holder"}),
            (lambda: store.purge([Status.FINISHED], T0, 10), {"ended"}),
            (lambda: store.start("r1", [make("t000")]), {"timerId_1"}),
        ]
        for call, indexes in expected:
            recorder.commands.clear()
            call()
            used: set[str] = set()
            for command in recorder.commands:
                plan = client[name].command("explain", command, verbosity="queryPlanner")
                assert "COLLSCAN" not in _stages(plan["queryPlanner"]["winningPlan"]), (command, plan)
                used |= _index_names(plan["queryPlanner"]["winningPlan"])
            assert indexes <= used, (indexes, used)
    finally:
        client.drop_database(name)
        client.close()


def test_mongo_swap_matches_a_document_without_attempts_or_revision(mongo_store: MongoStore) -> None:
    """Another tool (or the first layout) may leave counts out; they read as 0, so the compare-and-set must
    match such a document too."""
    mongo_store.insert(make("a"))
    mongo_store._timers.update_one({"timerId": "a"}, {"$unset": {"attempts": "", "revision": "", "deliveryCount": ""}})
    assert mongo_store.get("a") == make("a")
    assert mongo_store.cancel("a", T0) == changes.cancel(make("a"), T0)
    assert mongo_store.get("a") == changes.cancel(make("a"), T0)


# --- the first layout --------------------------------------------------------------------------------------

#: A document as the first layout stored it (no revision, end, count, callback or history).
FIRST_LAYOUT_KEYS = (
    "timerId", "webhookUrl", "expiryTime", "createdAt", "status", "payload", "attempts", "firedAt", "lastError",
    "dueAt", "leaseOwner", "leaseUntil",
)  # fmt: skip
#: A past instant: the migration caps an end at its own clock's now.
P0 = datetime(2021, 1, 1, tzinfo=UTC)
#: ``old(timer_id, due, **fields)``: a timer of the first layout, created an hour before P0.
old = partial(make_timer, now=P0 - timedelta(hours=1), created_at=P0 - timedelta(hours=1))


def first_layout(db: Any) -> None:
    """What the first MongoStore left: its documents and its indexes, and no schema document."""
    timers = db["timers"]
    timers.create_index("timerId", unique=True)
    timers.create_index([("status", 1), ("dueAt", 1)])
    timers.create_index([("status", 1), ("leaseUntil", 1)])
    timers.create_index([("expiryTime", 1), ("timerId", 1)])
    timers.create_index("leaseOwner", partialFilterExpression={"status": "Running"})
    done = old("done", P0 - 3 * MINUTE, status=Status.FINISHED, attempts=1, fired_at=P0 - 2 * MINUTE)
    waiting = old("waiting", P0 - MINUTE)
    never = old("never", datetime(2100, 1, 1, tzinfo=UTC), status=Status.CANCELLED)
    failed = old("failed", P0 - 5 * MINUTE, status=Status.FAILED, attempts=8, last_error="HTTP 500")
    for timer in (done, waiting, never, failed):
        timers.insert_one({k: v for k, v in _doc(timer).items() if k in FIRST_LAYOUT_KEYS})


def test_mongo_a_store_of_the_first_layout_is_migrated_and_every_timer_read() -> None:
    client = mongomock.MongoClient(tz_aware=True)
    first_layout(client["old"])
    before = datetime.now(UTC)
    store = MongoStore(client, "old")
    after = datetime.now(UTC)
    indexes = store._timers.index_information()
    assert not set(indexes) & {"status_1_dueAt_1", "status_1_leaseUntil_1", "leaseOwner_1"}
    assert {"claim_free", "lease_holder", "ended"} <= set(indexes)
    assert store._db[SCHEMA_COLLECTION].find_one({"_id": "timers"}) == {"_id": "timers", "version": SCHEMA_VERSION}

    assert store.get("done") == old(
        "done", P0 - 3 * MINUTE, status=Status.FINISHED, attempts=1, fired_at=P0 - 2 * MINUTE, ended_at=P0 - 2 * MINUTE
    )
    assert store.get("waiting") == old("waiting", P0 - MINUTE)
    failed, never = store.get("failed"), store.get("never")
    assert failed is not None and failed.ended_at == P0 - 5 * MINUTE, "never fired: ended when it was due"
    assert never is not None and never.ended_at is not None and before - MS <= never.ended_at <= after
    assert store.purgeable([Status.FINISHED, Status.FAILED, Status.CANCELLED], P0) == 2

    # A timer of the first layout lives on: claimed, started at revision 0, its attempt recorded.
    taken = store.claim_due("r1", P0, P0, P0 + 30 * SEC, 10)
    assert [t.timer_id for t in taken] == ["waiting"] and store.start("r1", taken) == ["waiting"]
    delivery = Delivery(1, P0, 12, 200)
    outcome = Outcome("waiting", Status.FINISHED, 1, P0, ended_at=P0, delivery=delivery)
    assert store.complete("r1", [outcome]) == ["waiting"]
    assert store.deliveries("waiting") == [delivery]
    got = store.get("waiting")
    assert got is not None and (got.delivery_count, got.revision) == (1, 0)


def test_mongo_a_store_of_a_newer_layout_is_refused_in_one_line() -> None:
    client = mongomock.MongoClient()
    client["newer"][SCHEMA_COLLECTION].insert_one({"_id": "timers", "version": SCHEMA_VERSION + 1})
    with pytest.raises(BackendUnavailable) as info:
        MongoStore(client, "newer")
    assert str(info.value) == (
        f"MongoDB store newer has schema version {SCHEMA_VERSION + 1}; this timerctl knows up to {SCHEMA_VERSION}"
    )
    assert client["newer"]["timers"].index_information() == {}, "nothing created in it"


# --- what MongoStore does its own way ---------------------------------------------------------------------


def test_mongo_keeps_the_history_in_the_document_cut_to_the_last_attempts(mongo_store: MongoStore) -> None:
    mongo_store.insert(make("a"))
    now = T0
    for n in range(1, MAX_DELIVERIES_KEPT + 4):
        taken = mongo_store.claim_due("r1", now, now, now + 30 * SEC, 1)
        assert mongo_store.start("r1", taken) == ["a"]
        outcome = Outcome("a", Status.RETRYING, n, due_at=now + SEC, delivery=Delivery(n, now, 5, 503))
        assert mongo_store.complete("r1", [outcome]) == ["a"]
        now += SEC
    doc = mongo_store._timers.find_one({"timerId": "a"})
    assert doc is not None
    assert [d["attempt"] for d in doc["deliveries"]] == list(range(4, MAX_DELIVERIES_KEPT + 4))
    assert doc["deliveryCount"] == MAX_DELIVERIES_KEPT + 3


def test_mongo_skips_a_history_entry_it_cannot_read(mongo_store: MongoStore) -> None:
    mongo_store.insert(make("a"))
    good = {"attempt": 2, "at": T0, "durationMs": 7, "statusCode": 200, "error": None, "response": "ok"}
    mongo_store._timers.update_one({"timerId": "a"}, {"$set": {"deliveries": [{"attempt": "one"}, "junk", good]}})
    assert mongo_store.deliveries("a") == [Delivery(2, T0, 7, 200, None, "ok")]
    mongo_store._timers.update_one({"timerId": "a"}, {"$set": {"deliveries": "not a list"}})
    assert mongo_store.deliveries("a") == []


def test_mongo_claim_searches_again_after_losing_timers_to_another_runner(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between this claim's search and its update, another runner takes one of the timers it found: the
    update leaves that one alone, and the search runs again for what is left."""
    mongo_store.insert_many([make("a", T0), make("b", T0 + MS), make("c", T0 + 2 * MS), make("d", T0 + 3 * MS)])
    update_many = mongo_store._timers.update_many
    rivals: list[list[Timer]] = []

    def rival_first(*args: Any, **kwargs: Any) -> Any:
        if not rivals:
            rivals.append([])  # the rival's own update goes straight through
            rivals[0] = mongo_store.claim_due("r2", T0, T0, T0 + 30 * SEC, 1)
        return update_many(*args, **kwargs)

    monkeypatch.setattr(mongo_store._timers, "update_many", rival_first)
    claimed = mongo_store.claim_due("r1", T0, T0 + SEC, T0 + 30 * SEC, 3)
    assert [t.timer_id for t in rivals[0]] == ["a"]
    assert [t.timer_id for t in claimed] == ["b", "c", "d"]
    assert {t.timer_id: t.lease_owner for t in mongo_store.find()} == {"a": "r2", "b": "r1", "c": "r1", "d": "r1"}


def test_mongo_renew_reads_back_when_a_lease_was_lost_in_between(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    mongo_store.insert_many([make("a"), make("b")])
    mongo_store.claim_due("r1", T0, T0, T0 + 10 * SEC, 10)
    update_many = mongo_store._timers.update_many

    def taken_over_first(*args: Any, **kwargs: Any) -> Any:
        mongo_store._timers.update_one({"timerId": "a"}, {"$set": {"leaseOwner": "r2"}})
        return update_many(*args, **kwargs)

    monkeypatch.setattr(mongo_store._timers, "update_many", taken_over_first)
    assert mongo_store.renew("r1", T0 + 60 * SEC, T0 + 30 * SEC) == {"b"}
    got = mongo_store.get("a")
    assert got is not None and (got.lease_owner, got.lease_until) == ("r2", T0 + 10 * SEC)


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


def test_mongo_refused_credentials_are_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MongoStore(mongomock.MongoClient(), "timerctl_auth")

    def refused(*args: Any, **kwargs: Any) -> None:
        raise OperationFailure("Authentication failed.", code=18)

    monkeypatch.setattr(store._timers, "find_one", refused)
    with pytest.raises(BackendUnavailable, match=r"^MongoDB store timerctl_auth refused access: Authentication"):
        store.get("a")

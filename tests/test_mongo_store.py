"""What only MongoStore does: its URI, its indexes, and its errors (on mongomock, with failures injected).

The contract every store keeps runs on MongoStore too, in ``test_store_contract.py``; the tests here that
need a real server skip without ``TIMERCTL_TEST_MONGO_URI``.
"""

from __future__ import annotations

from typing import Any

import mongomock
import pytest
from pymongo.errors import NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

from tests.fixtures_stores import (
    SEC,
    T0,
    make,
    mongo_backends,  # noqa: F401 (the fixture `mongo_store`)
    mongo_store_of,
)
from timerctl import model
from timerctl.model import BackendUnavailable, InvalidInput
from timerctl.stores import mongo as mongo_module
from timerctl.stores.mongo import MongoStore


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
    with mongo_store_of("mongo") as store:
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

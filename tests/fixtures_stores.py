"""Stores for the contract suite: every backend behind one ``store`` fixture, and raw access to plant corruption.

Not a plugin: a module of the contract suite imports ``every_backend`` (the fixture ``store``), which then
stands in for the SQLite-only ``store`` of ``tests/conftest.py`` in that module alone.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import mongomock
import pymongo
import pytest

from tests.factories import make_timer
from timerctl.model import Timer
from timerctl.stores.base import Store
from timerctl.stores.mongo import MongoStore
from timerctl.stores.sqlite import SqliteStore

MONGO_URI_ENV = "TIMERCTL_TEST_MONGO_URI"
#: The suite's fixed instants: nothing in it reads the clock.
T0 = datetime(2030, 1, 1, tzinfo=UTC)
SEC = timedelta(seconds=1)
MS = timedelta(milliseconds=1)
CREATED = T0 - timedelta(hours=1)

#: ``make(timer_id, due=T0, **fields)``: a Scheduled timer expiring (and due) at ``due`` (T0 unless given),
#: created an hour before T0, for ``https://hooks.example.com/<timer_id>``.
make = partial(make_timer, now=CREATED, created_at=CREATED)


def ids(timers: list[Timer]) -> list[str]:
    return [t.timer_id for t in timers]


def mongo_uri() -> str:
    uri = os.environ.get(MONGO_URI_ENV)
    if not uri:
        # No MongoDB server can be installed on this project's machines (not in Debian's archive), so a
        # missing URI skips even under CI; the mongomock run covers the same contract without one.
        pytest.skip(f"set {MONGO_URI_ENV}=mongodb://host:port to run the contract on a real MongoDB")
    return uri


@contextmanager
def mongo_store_of(kind: str) -> Iterator[MongoStore]:
    """A MongoStore in a database of its own: on mongomock, or on the real server (dropped after)."""
    name = f"timerctl_test_{uuid.uuid4().hex[:12]}"
    if kind == "mongomock":
        yield MongoStore(mongomock.MongoClient(), name)
        return
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_uri(), serverSelectionTimeoutMS=5000, tz_aware=True
    )
    try:
        yield MongoStore(client, name)
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture(params=["sqlite", "mongomock", "mongo"], name="store")
def every_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """``store``: a SQLite file, MongoStore on mongomock, MongoStore on a real server (``$TIMERCTL_TEST_MONGO_URI``)."""
    if request.param == "sqlite":
        sqlite = SqliteStore(str(tmp_path / "timers.db"))
        yield sqlite
        sqlite.close()
        return
    with mongo_store_of(request.param) as mongo:
        yield mongo


@pytest.fixture(params=["mongomock", "mongo"], name="mongo_store")
def mongo_backends(request: pytest.FixtureRequest) -> Iterator[MongoStore]:
    """``mongo_store``: MongoStore on mongomock, and on a real server (``$TIMERCTL_TEST_MONGO_URI``)."""
    with mongo_store_of(request.param) as mongo:
        yield mongo


# --- raw access: what a hand edit or another tool could leave ------------------------------------------------

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
    "revision": "revision",
    "endedAt": "ended_ms",
    "deliveryCount": "delivery_count",
    "onFailureUrl": "on_failure_url",
}


def corrupt(db: str | Path, timer_id: str, column: str, value: object) -> None:
    """Set a column of a timer's row in the SQLite file ``db`` to a value timerctl itself never writes."""
    with sqlite3.connect(db, isolation_level=None) as conn:
        assert conn.execute(f"UPDATE timers SET {column} = ? WHERE timer_id = ?", (value, timer_id)).rowcount == 1


def plant(store: Store, timer_id: str, **raw: Any) -> None:
    """Overwrite fields of a stored timer (by their JSON names) with raw values the store itself would never write."""
    if isinstance(store, SqliteStore):
        for name, value in raw.items():
            corrupt(store.path, timer_id, SQLITE_COLUMNS[name], value)
        return
    assert isinstance(store, MongoStore)
    store._timers.update_one({"timerId": timer_id}, {"$set": raw})


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

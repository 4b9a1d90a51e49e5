"""The MongoDB store's layout: the ``timers`` indexes, the partial filters they hold, the layout version kept in
the ``schema`` collection, and ``migrate``, which brings an older store up to that version.

Kept apart from ``mongo.py`` because it changes for another reason: the queries there change with what the
store does, this only when the layout does (then bump ``SCHEMA_VERSION`` and extend ``migrate``). The queries
import ``FREE``, ``HELD`` and ``ENDED`` from here: the server uses a partial index only for a query that
carries its filter word for word.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import OperationFailure

from timerctl.model import BackendUnavailable, Status

COLLECTION = "timers"
#: Where the layout version lives: one document, ``{_id: "timers", version: N}``.
SCHEMA_COLLECTION = "schema"
#: Bumped with every change of the layout (2: leases without a status, revisions, deliveries, endedAt).
SCHEMA_VERSION = 2
_INDEX_NOT_FOUND = 27
_FINAL = [s.value for s in Status if s.is_final]
#: The partial filters: a free timer (null or missing owner), a held one, an ended one.
FREE = None
HELD: dict[str, Any] = {"$type": "string"}
ENDED: dict[str, Any] = {"$type": "date"}
#: Each index and the queries it serves. ``claim_free`` holds no leased timer, so a claim never walks
#: past the timers other runners hold; ``lease_holder`` serves renewals (owner, then lease end) and the
#: takeover of lapsed leases (a few owners, each skipped to its expired range).
INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("timerId", ASCENDING)], {"name": "timerId_1", "unique": True}),
    (
        [("status", ASCENDING), ("dueAt", ASCENDING)],
        {"name": "claim_free", "partialFilterExpression": {"leaseOwner": FREE}},
    ),
    (
        [("leaseOwner", ASCENDING), ("leaseUntil", ASCENDING)],
        {"name": "lease_holder", "partialFilterExpression": {"leaseOwner": HELD}},
    ),
    ([("expiryTime", ASCENDING), ("timerId", ASCENDING)], {"name": "expiryTime_1_timerId_1"}),
    (
        [("status", ASCENDING), ("endedAt", ASCENDING)],
        {"name": "ended", "partialFilterExpression": {"endedAt": ENDED}},
    ),
]
#: Indexes of the first layout that no query uses any more.
OBSOLETE_INDEXES = ("status_1_dueAt_1", "status_1_leaseUntil_1", "leaseOwner_1")


def migrate(db: Database[Any]) -> None:
    """Bring ``db`` to ``SCHEMA_VERSION``: drop the indexes no query uses, create the current ones, and give
    ended timers an ``endedAt`` (when they fired, else were due, at the latest now) so retention deletes them
    too. Each step is idempotent: processes opening an old store at once are fine.

    BackendUnavailable for a store of a newer (or unreadable) version, which this timerctl must not touch.
    """
    schema = db[SCHEMA_COLLECTION]
    timers = db[COLLECTION]
    found = schema.find_one({"_id": COLLECTION})
    version = found.get("version") if found is not None else 1  # the first layout recorded none
    if version == SCHEMA_VERSION:
        return
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BackendUnavailable(
            f"MongoDB store {db.name} has schema version {version!r}; this timerctl knows up to {SCHEMA_VERSION}"
        )
    present = timers.index_information()
    for name in OBSOLETE_INDEXES:
        if name in present:
            try:
                timers.drop_index(name)
            except OperationFailure as exc:  # dropped meanwhile by another process migrating
                if exc.code != _INDEX_NOT_FOUND:
                    raise
    for keys, options in INDEXES:  # each a no-op when it exists
        timers.create_index(keys, **options)
    ended = {"$min": [{"$ifNull": ["$firedAt", "$dueAt"]}, datetime.now(UTC)]}
    timers.update_many({"status": {"$in": _FINAL}, "endedAt": None}, [{"$set": {"endedAt": ended}}])
    schema.update_one({"_id": COLLECTION}, {"$max": {"version": SCHEMA_VERSION}}, upsert=True)

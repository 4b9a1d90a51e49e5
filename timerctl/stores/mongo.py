"""The shared store: one MongoDB collection that runners on many machines claim timers from.

Each timer is one document in ``timers``, keyed by a unique index on ``timerId``. Every claim and every
later write by a runner is a single-document atomic update whose filter names the state it expects
(``status`` and ``leaseOwner``), so a runner whose lease was taken over writes nothing. Instants are
BSON datetimes in UTC (millisecond precision, as the model keeps them).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, cast

from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)

from timerctl.model import (
    BackendUnavailable,
    InvalidInput,
    NotFound,
    Status,
    Timer,
    cancel,
    encode_payload,
    utc,
)
from timerctl.stores.base import Outcome

DEFAULT_DATABASE = "timerctl"
COLLECTION = "timers"
_DUPLICATE_KEY = 11000
_ACCESS_DENIED = frozenset({13, 18})  # Unauthorized, AuthenticationFailed: wrong or missing credentials
_SCHEDULED = Status.SCHEDULED.value
_RUNNING = Status.RUNNING.value

Document = dict[str, Any]


def _instant(value: datetime) -> datetime:
    """An aware UTC datetime from what the driver returns (naive UTC unless the client is tz_aware)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _maybe(value: datetime | None) -> datetime | None:
    return utc(value) if value is not None else None


def _doc(timer: Timer) -> Document:
    # The payload is kept as its JSON text, as in SQLite: BSON cannot hold integers past 64 bits and
    # treats keys with '.' or a leading '$' specially, so a native sub-document would not round-trip.
    return {
        "timerId": timer.timer_id,
        "webhookUrl": timer.webhook_url,
        "expiryTime": utc(timer.expiry_time),
        "createdAt": utc(timer.created_at),
        "status": timer.status.value,
        "payload": encode_payload(timer.payload),
        "attempts": timer.attempts,
        "firedAt": _maybe(timer.fired_at),
        "lastError": timer.last_error,
        "dueAt": utc(timer.due_at),
        "leaseOwner": timer.lease_owner,
        "leaseUntil": _maybe(timer.lease_until),
    }


def _timer(doc: Document) -> Timer:
    payload = doc.get("payload")
    fired, lease = doc.get("firedAt"), doc.get("leaseUntil")
    return Timer(
        timer_id=doc["timerId"],
        webhook_url=doc["webhookUrl"],
        expiry_time=_instant(doc["expiryTime"]),
        created_at=_instant(doc["createdAt"]),
        status=Status(doc["status"]),
        payload=json.loads(payload) if payload is not None else None,
        attempts=doc.get("attempts", 0),
        fired_at=_instant(fired) if fired is not None else None,
        last_error=doc.get("lastError"),
        due_at=_instant(doc["dueAt"]),
        lease_owner=doc.get("leaseOwner"),
        lease_until=_instant(lease) if lease is not None else None,
    )


def _one_line(exc: Exception) -> str:
    """The driver's message cut to its first clause (server selection errors append a topology dump)."""
    text = str(exc).split(", Timeout:")[0].splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class MongoStore:
    """Store on a MongoDB database (collection ``timers``, indexes created on first use)."""

    def __init__(self, client: MongoClient[Any] | Database[Any], database: str = DEFAULT_DATABASE) -> None:
        """A store on ``client`` (a MongoClient, or a Database whose own name wins over ``database``).

        Also accepts mongomock's look-alikes, so tests can run the contract without a server.
        """
        self._client: MongoClient[Any] | None = None
        # Duck-typed so mongomock's classes, which subclass nothing of pymongo's, fit. Asked of the class:
        # a Database instance answers every attribute with a Collection.
        is_client = hasattr(type(client), "get_database")
        db = cast("Database[Any]", client.get_database(database) if is_client else client)
        self.database = db.name
        self._db = db
        self._timers: Collection[Document] = db[COLLECTION]
        with self._guard():
            self._timers.create_index("timerId", unique=True)
            self._timers.create_index([("status", ASCENDING), ("dueAt", ASCENDING)])  # claims, next_due
            self._timers.create_index([("status", ASCENDING), ("leaseUntil", ASCENDING)])  # lease expiry
            self._timers.create_index([("expiryTime", ASCENDING), ("timerId", ASCENDING)])  # list

    @classmethod
    def from_uri(cls, uri: str, timeout: float = 5.0) -> MongoStore:
        """A store on the server at ``uri`` (database from its path, else ``timerctl``).

        BackendUnavailable within about ``timeout`` seconds when no server answers.
        """
        try:
            client: MongoClient[Document] = MongoClient(
                uri,
                serverSelectionTimeoutMS=int(timeout * 1000),
                connectTimeoutMS=int(timeout * 1000),
                socketTimeoutMS=30_000,  # a server that accepts but never answers must not hang a runner
                tz_aware=True,
                tzinfo=UTC,
            )
            db = client.get_default_database(default=DEFAULT_DATABASE)
        except (ConfigurationError, ValueError) as exc:  # InvalidURI, or a bad port or option value
            # The URI is not echoed: it may carry a password.
            expected = "expected mongodb://host[:port]/database"
            raise InvalidInput(f"invalid MongoDB URI: {_one_line(exc)}; {expected}") from exc
        try:
            store = cls(db)
        except BaseException:
            client.close()
            raise
        store._client = client
        return store

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the driver's connection failures (timeouts, refused, lost primary) into BackendUnavailable."""
        try:
            yield
        except OperationFailure as exc:
            if exc.code not in _ACCESS_DENIED:
                raise
            raise BackendUnavailable(f"MongoDB store {self.database} refused access: {_one_line(exc)}") from exc
        except ConnectionFailure as exc:
            raise BackendUnavailable(f"MongoDB store {self.database} is unavailable: {_one_line(exc)}") from exc

    def insert(self, timer: Timer) -> Timer:
        with self._guard():
            # DuplicateKeyError: a concurrent insert of the same id won the race; return that one.
            with suppress(DuplicateKeyError):
                self._timers.update_one({"timerId": timer.timer_id}, {"$setOnInsert": _doc(timer)}, upsert=True)
            doc = self._timers.find_one({"timerId": timer.timer_id})
        if doc is None:
            raise BackendUnavailable(f"MongoDB store {self.database} lost timer {timer.timer_id} just inserted")
        return _timer(doc)

    def insert_many(self, timers: Sequence[Timer]) -> int:
        """How many of ``timers`` were new; the others are left as stored (first write wins).

        Unlike SQLite this is not one transaction (that would need a replica set): an unordered insert
        relying on the unique ``timerId`` index, so a batch cut short by a failure converges when retried.
        A plain insert rather than upserts because mongomock's bulk_write rejects current pymongo's UpdateOne.
        """
        # An unordered insert may apply a batch in any order, so repeats within it are dropped here.
        first: dict[str, Timer] = {}
        for timer in timers:
            first.setdefault(timer.timer_id, timer)
        if not first:
            return 0
        with self._guard():
            try:
                docs = [_doc(t) for t in first.values()]
                return len(self._timers.insert_many(docs, ordered=False).inserted_ids)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                return int(exc.details.get("nInserted", 0))

    def get(self, timer_id: str) -> Timer | None:
        with self._guard():
            doc = self._timers.find_one({"timerId": timer_id})
        return _timer(doc) if doc is not None else None

    def list(self, status: Status | None = None, limit: int = 100, due_before: datetime | None = None) -> list[Timer]:
        if limit <= 0:
            return []  # pymongo reads limit 0 as "no limit"
        query: Document = {}
        if status is not None:
            query["status"] = status.value
        if due_before is not None:
            query["expiryTime"] = {"$lte": utc(due_before)}
        with self._guard():
            cursor = self._timers.find(query, sort=[("expiryTime", ASCENDING), ("timerId", ASCENDING)], limit=limit)
            return [_timer(d) for d in cursor]

    def cancel(self, timer_id: str, fallback: Timer | None = None) -> Timer:
        if fallback is not None and fallback.timer_id != timer_id:
            raise ValueError(f"fallback is timer {fallback.timer_id}, not {timer_id}")
        with self._guard():
            # Each pass reads, applies the model's rule, then writes only if the state is still the one
            # read; a pass repeats only when another process changed the timer in between.
            while True:
                doc = self._timers.find_one({"timerId": timer_id})
                if doc is None:
                    if fallback is None:
                        raise NotFound(timer_id)
                    tombstone = cancel(fallback)
                    try:
                        done = self._timers.update_one(
                            {"timerId": timer_id}, {"$setOnInsert": _doc(tombstone)}, upsert=True
                        )
                    except DuplicateKeyError:
                        continue
                    if done.upserted_id is not None:
                        return tombstone
                    continue  # the create landed meanwhile: cancel that one instead
                cancel(_timer(doc))  # Conflict naming the status when it is not Scheduled
                after = self._timers.find_one_and_update(
                    {"timerId": timer_id, "status": _SCHEDULED},
                    {"$set": {"status": Status.CANCELLED.value, "leaseOwner": None, "leaseUntil": None}},
                    return_document=ReturnDocument.AFTER,
                )
                if after is not None:
                    return _timer(after)

    def claim_due(
        self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[Timer]:
        """The timers claimed for ``owner``, oldest due first.

        One ``find_one_and_update`` per timer, not ``update_many``: update_many takes neither a sort nor
        a limit, and reading back what it changed cannot tell this runner's claims from another's made in
        between. Each find_one_and_update is atomic on its document, so when two runners race for a timer
        exactly one of them gets it back.
        """
        claimed: builtins.list[Timer] = []
        due = {
            "$or": [
                {"status": _SCHEDULED, "dueAt": {"$lte": utc(until)}},
                {"status": _RUNNING, "leaseUntil": {"$lt": utc(now)}},
            ]
        }
        with self._guard():
            while len(claimed) < limit:
                # Excluding what this call already took keeps a lease_until in the past from looping.
                query = {**due, "timerId": {"$nin": [t.timer_id for t in claimed]}}
                doc = self._timers.find_one_and_update(
                    query,
                    {"$set": {"status": _RUNNING, "leaseOwner": owner, "leaseUntil": utc(lease_until)}},
                    sort=[("dueAt", ASCENDING)],
                    return_document=ReturnDocument.AFTER,
                )
                if doc is None:
                    break
                claimed.append(_timer(doc))
        return sorted(claimed, key=lambda t: (t.due_at, t.timer_id))

    def renew(self, owner: str, timer_ids: Sequence[str], lease_until: datetime) -> set[str]:
        if not timer_ids:
            return set()
        until = utc(lease_until)
        held = {"status": _RUNNING, "leaseOwner": owner, "timerId": {"$in": list(timer_ids)}}
        with self._guard():
            self._timers.update_many(held, {"$set": {"leaseUntil": until}})
            # A takeover, before the update or after it, changes leaseOwner, so the read-back leaves
            # that timer out: what it finds is exactly what this owner still holds.
            docs = self._timers.find(held, projection={"timerId": True})
            return {d["timerId"] for d in docs}

    def release(self, owner: str, timer_ids: Sequence[str]) -> int:
        if not timer_ids:
            return 0
        with self._guard():
            result = self._timers.update_many(
                {"status": _RUNNING, "leaseOwner": owner, "timerId": {"$in": list(timer_ids)}},
                {"$set": {"status": _SCHEDULED, "leaseOwner": None, "leaseUntil": None}},
            )
        return result.modified_count

    def complete(self, owner: str, outcomes: Sequence[Outcome]) -> builtins.list[str]:
        recorded: builtins.list[str] = []
        with self._guard():
            for o in outcomes:
                changes: Document = {
                    "status": o.status.value,
                    "attempts": o.attempts,
                    "firedAt": _maybe(o.fired_at),
                    "lastError": o.last_error,
                    "leaseOwner": None,
                    "leaseUntil": None,
                }
                if o.due_at is not None:
                    changes["dueAt"] = utc(o.due_at)
                result = self._timers.update_one(
                    {"timerId": o.timer_id, "status": _RUNNING, "leaseOwner": owner}, {"$set": changes}
                )
                if result.matched_count:
                    recorded.append(o.timer_id)
        return recorded

    def next_due(self) -> datetime | None:
        with self._guard():
            doc = self._timers.find_one({"status": _SCHEDULED}, {"dueAt": True}, sort=[("dueAt", ASCENDING)])
        return _instant(doc["dueAt"]) if doc is not None else None

    def counts(self) -> dict[Status, int]:
        with self._guard():
            rows = list(self._timers.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}]))
        found = {Status(r["_id"]): int(r["n"]) for r in rows}
        return {s: found.get(s, 0) for s in Status}

    def ping(self) -> None:
        with self._guard():
            self._db.command("ping")

    def close(self) -> None:
        """Close the connection pool if ``from_uri`` opened it; an injected client is the caller's."""
        if self._client is not None:
            self._client.close()
            self._client = None

"""The shared store: one MongoDB collection that runners on many machines claim timers from.

Each timer is one document in ``timers``, keyed by a unique index on ``timerId``. Every claim and every
later write by a runner is a single-document atomic update whose filter names the state it expects
(``status`` and ``leaseOwner``), so a runner whose lease was taken over writes nothing. Instants are
BSON datetimes in UTC (millisecond precision, as the model keeps them). Documents are decoded through
the tolerant ``rows.decode_row``: a corrupt one reads as a Failed timer and is never handed to a runner.
"""

from __future__ import annotations

import builtins
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import unquote_plus

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
from timerctl.stores.rows import decode_row, status_of

log = logging.getLogger(__name__)

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


#: A document's fields in ``Timer``'s order, as ``decode_row`` takes them.
_FIELDS = ("timerId", "webhookUrl", "expiryTime", "createdAt", "status", "payload")
_LATER_FIELDS = ("firedAt", "lastError", "dueAt", "leaseOwner", "leaseUntil")


def _stored_instant(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError("not a BSON date")
    return _instant(value)


def _decode(doc: Document) -> tuple[Timer, str | None]:
    """The Timer of a document and None, or a Failed Timer and what is corrupt in the document."""
    values = [doc.get(k) for k in _FIELDS] + [doc.get("attempts", 0)] + [doc.get(k) for k in _LATER_FIELDS]
    return decode_row(values, _stored_instant)


def _timer(doc: Document) -> Timer:
    """The Timer of a document; a corrupt one reads as Failed with the corruption in ``last_error``."""
    return _decode(doc)[0]


_NO_LEASE: Document = {"leaseOwner": None, "leaseUntil": None}


def _mask(text: str, uri: str) -> str:
    """``text`` with the password of ``uri``'s ``user:password@`` (found without parsing: the URI may be
    malformed) replaced by ``***``, as typed and percent-decoded."""
    userinfo, at, _ = uri.partition("://")[2].rpartition("@")
    password = userinfo.partition(":")[2] if at else ""
    for form in {password, unquote_plus(password)} - {""}:
        text = text.replace(form, "***")
    return text


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
        expected = "expected mongodb://host[:port]/database"
        try:
            # The driver only warns about an option it does not understand, and ignores it: a typo such
            # as tls=ture would silently turn TLS off. Refused here instead, as a bad URI.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                client: MongoClient[Document] = MongoClient(
                    uri,
                    serverSelectionTimeoutMS=int(timeout * 1000),
                    connectTimeoutMS=int(timeout * 1000),
                    socketTimeoutMS=30_000,  # a server that accepts but never answers must not hang a runner
                    tz_aware=True,
                    tzinfo=UTC,
                )
            refused = [w for w in caught if issubclass(w.category, UserWarning)]
            if refused:
                client.close()
                raise InvalidInput(f"invalid MongoDB URI: {_mask(str(refused[0].message), uri)}; {expected}")
            db = client.get_default_database(default=DEFAULT_DATABASE)
        except (ConfigurationError, ValueError) as exc:  # InvalidURI, or a bad port or option value
            # The URI is not echoed: it may carry a password (masked too should the driver ever quote it).
            raise InvalidInput(f"invalid MongoDB URI: {_mask(_one_line(exc), uri)}; {expected}") from None
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

    def insert(self, timer: Timer) -> tuple[Timer, bool]:
        new = False
        with self._guard():
            # DuplicateKeyError: a concurrent insert of the same id won the race; return that one.
            with suppress(DuplicateKeyError):
                result = self._timers.update_one(
                    {"timerId": timer.timer_id}, {"$setOnInsert": _doc(timer)}, upsert=True
                )
                new = result.upserted_id is not None  # None when the filter matched an existing timer
            doc = self._timers.find_one({"timerId": timer.timer_id})
        if doc is None:
            raise BackendUnavailable(f"MongoDB store {self.database} lost timer {timer.timer_id} just inserted")
        return _timer(doc), new

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
                {"status": _RUNNING, "leaseUntil": None},  # no lease to wait out (null or missing)
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
                timer, corruption = _decode(doc)
                if corruption is None:
                    claimed.append(timer)
                    continue
                # Failed by the same owner that holds it: a runner must never get it, now or after a
                # restart. Should this process die in between, the lease lapses and the next claim does it.
                self._timers.update_one(
                    {"_id": doc["_id"], "status": _RUNNING, "leaseOwner": owner},
                    {"$set": {"status": Status.FAILED.value, "lastError": timer.last_error, **_NO_LEASE}},
                )
                log.warning("timer %s marked Failed: %s", timer.timer_id, timer.last_error)
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
        # Only dates: null, numbers and strings sort before them, and a corrupt dueAt is never due.
        query = {"status": _SCHEDULED, "dueAt": {"$type": "date"}}
        with self._guard():
            doc = self._timers.find_one(query, {"dueAt": True}, sort=[("dueAt", ASCENDING)])
        return _instant(doc["dueAt"]) if doc is not None else None

    def counts(self) -> dict[Status, int]:
        with self._guard():
            rows = list(self._timers.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}]))
        counted = dict.fromkeys(Status, 0)
        for row in rows:
            counted[status_of(row["_id"])] += int(row["n"])  # a status no Timer has reads, and counts, as Failed
        return counted

    def ping(self) -> None:
        with self._guard():
            self._db.command("ping")

    def close(self) -> None:
        """Close the connection pool if ``from_uri`` opened it; an injected client is the caller's."""
        if self._client is not None:
            self._client.close()
            self._client = None

"""The shared store: one MongoDB collection that runners on many machines claim timers from.

Each timer is one document in ``timers``, keyed by a unique index on ``timerId``. Every claim and every
later write by a runner is a single-document atomic update whose filter names the state it expects
(``status`` and ``leaseOwner``), so a runner whose lease was taken over writes nothing. Instants are
BSON datetimes in UTC (millisecond precision, as the model keeps them). Documents are decoded through
the tolerant ``rows.decode_row``: a corrupt one reads as a Failed timer and is never handed to a runner.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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

from timerctl.model import BackendUnavailable, InvalidInput, Outcome, Status, Timer, encode_payload, utc
from timerctl.redaction import one_line
from timerctl.stores.base import StoreBase
from timerctl.stores.rows import TIMER_FIELDS, Decoded, changed_fields, decode_row

DEFAULT_DATABASE = "timerctl"
COLLECTION = "timers"
_DUPLICATE_KEY = 11000
_ACCESS_DENIED = frozenset({13, 18})  # Unauthorized, AuthenticationFailed: wrong or missing credentials
_SCHEDULED = Status.SCHEDULED.value
_RUNNING = Status.RUNNING.value
_AFTER = ReturnDocument.AFTER

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
_KEY_OF = dict(zip(TIMER_FIELDS, (*_FIELDS, "attempts", *_LATER_FIELDS), strict=True))


def _stored_instant(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError("not a BSON date")
    return _instant(value)


def _decode(doc: Document) -> Decoded:
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
    return one_line(str(exc).split(", Timeout:")[0].split("\n")[0] or type(exc).__name__, limit=200)


class MongoStore(StoreBase):
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
            self._timers.create_index([("status", ASCENDING), ("dueAt", ASCENDING)])  # claims
            self._timers.create_index([("status", ASCENDING), ("leaseUntil", ASCENDING)])  # lease expiry
            self._timers.create_index([("expiryTime", ASCENDING), ("timerId", ASCENDING)])  # find
            # renew: only Running timers hold a lease, so only they are indexed (a query must name
            # status Running for the server to use a partial index).
            self._timers.create_index("leaseOwner", partialFilterExpression={"status": _RUNNING})

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

    def _get(self, timer_id: str) -> Decoded | None:
        with self._guard():
            doc = self._timers.find_one({"timerId": timer_id})
        return _decode(doc) if doc is not None else None

    def _insert_new(self, timer: Timer) -> bool:
        with self._guard():
            try:
                result = self._timers.update_one(
                    {"timerId": timer.timer_id}, {"$setOnInsert": _doc(timer)}, upsert=True
                )
            except DuplicateKeyError:  # a concurrent upsert of the same id won the race
                return False
        return result.upserted_id is not None  # None when the filter matched an existing timer

    def _swap(self, old: Timer, new: Timer) -> bool:
        # null in a filter matches a missing field too, as _decode reads one; an absent attempts reads 0.
        state: Document = {
            "timerId": old.timer_id,
            "status": old.status.value,
            "leaseOwner": old.lease_owner,
            "leaseUntil": _maybe(old.lease_until),
            "attempts": old.attempts if old.attempts else {"$in": [0, None]},
            "dueAt": utc(old.due_at),
        }
        doc = _doc(new)
        changes = {_KEY_OF[name]: doc[_KEY_OF[name]] for name in changed_fields(old, new)}
        with self._guard():
            return self._timers.update_one(state, {"$set": changes}).matched_count == 1

    def _insert_many(self, timers: Sequence[Timer]) -> int:
        """How many of ``timers`` were new; the others are left as stored (first write wins).

        Unlike SQLite this is not one transaction (that would need a replica set): an unordered insert
        relying on the unique ``timerId`` index, so a batch cut short by a failure converges when retried.
        A plain insert rather than upserts because mongomock's bulk_write rejects current pymongo's UpdateOne.
        """
        with self._guard():
            try:
                return len(self._timers.insert_many([_doc(t) for t in timers], ordered=False).inserted_ids)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                return int(exc.details.get("nInserted", 0))

    def _find(self, status: Status | None, limit: int, due_before: datetime | None) -> list[Timer]:
        query: Document = {}
        if status is not None:
            query["status"] = status.value
        if due_before is not None:
            query["expiryTime"] = {"$lte": utc(due_before)}
        with self._guard():
            cursor = self._timers.find(query, sort=[("expiryTime", ASCENDING), ("timerId", ASCENDING)], limit=limit)
            return [_timer(d) for d in cursor]

    def _claim(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        """The timers claimed for ``owner``, oldest due first.

        One ``find_one_and_update`` per timer, not ``update_many``: update_many takes neither a sort nor
        a limit, and reading back what it changed cannot tell this runner's claims from another's made in
        between. Each find_one_and_update is atomic on its document, so when two runners race for a timer
        exactly one of them gets it back.
        """
        due = {
            "$or": [
                {"status": _SCHEDULED, "dueAt": {"$lte": utc(until)}},
                {"status": _RUNNING, "leaseUntil": {"$lt": utc(now)}},
                {"status": _RUNNING, "leaseUntil": None},  # no lease to wait out (null or missing)
            ]
        }
        lease = {"$set": {"status": _RUNNING, "leaseOwner": owner, "leaseUntil": utc(lease_until)}}

        def claims() -> Iterator[tuple[Any, Decoded]]:
            taken: list[Any] = []
            sound = 0
            while sound < limit:
                # Excluding what this call already took keeps a lease_until in the past from looping.
                doc = self._timers.find_one_and_update(
                    {**due, "_id": {"$nin": taken}}, lease, sort=[("dueAt", ASCENDING)], return_document=_AFTER
                )
                if doc is None:
                    return
                taken.append(doc["_id"])
                decoded = _decode(doc)
                sound += decoded[1] is None
                yield doc["_id"], decoded

        def fail(key: Any, timer: Timer) -> None:
            # Failed by the same owner that holds it. Should this process die before this write, the
            # lease lapses and the next claim fails it.
            self._timers.update_one(
                {"_id": key, "status": _RUNNING, "leaseOwner": owner},
                {"$set": {"status": Status.FAILED.value, "lastError": timer.last_error, **_NO_LEASE}},
            )

        with self._guard():
            return self._keep_sound(claims(), fail)

    def renew(self, owner: str, lease_until: datetime) -> set[str]:
        held = {"status": _RUNNING, "leaseOwner": owner}  # served by the partial index on leaseOwner
        with self._guard():
            self._timers.update_many(held, {"$set": {"leaseUntil": utc(lease_until)}})
            # update_many returns counts, not documents, hence the read-back. A takeover, before the
            # update or after it, changes leaseOwner, so the read leaves that timer out: what it finds is
            # exactly what this owner holds now.
            return {d["timerId"] for d in self._timers.find(held, projection={"timerId": True, "_id": False})}

    def _release(self, owner: str, timer_ids: Sequence[str]) -> int:
        with self._guard():
            result = self._timers.update_many(
                {"status": _RUNNING, "leaseOwner": owner, "timerId": {"$in": list(timer_ids)}},
                {"$set": {"status": _SCHEDULED, **_NO_LEASE}},
            )
        return result.modified_count

    def _complete(self, owner: str, outcomes: Sequence[Outcome]) -> list[str]:
        recorded: list[str] = []
        with self._guard():
            for o in outcomes:
                # Outcome.apply's fields: a retry without a due_at keeps the timer's due.
                changes: Document = {
                    "status": o.status.value,
                    "attempts": o.attempts,
                    "firedAt": _maybe(o.fired_at),
                    "lastError": o.last_error,
                    **_NO_LEASE,
                }
                if o.due_at is not None:
                    changes["dueAt"] = utc(o.due_at)
                result = self._timers.update_one(
                    {"timerId": o.timer_id, "status": _RUNNING, "leaseOwner": owner}, {"$set": changes}
                )
                if result.matched_count:
                    recorded.append(o.timer_id)
        return recorded

    def _count_statuses(self) -> list[tuple[Any, int]]:
        with self._guard():
            rows = self._timers.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
            return [(row["_id"], int(row["n"])) for row in rows]

    def ping(self) -> None:
        with self._guard():
            self._db.command("ping")

    def close(self) -> None:
        """Close the connection pool if ``from_uri`` opened it; an injected client is the caller's."""
        if self._client is not None:
            self._client.close()
            self._client = None

"""The shared store: one MongoDB collection that runners on many machines claim timers from.

Each timer is one document in ``timers``, keyed by a unique index on ``timerId``; its last
``MAX_DELIVERIES_KEPT`` attempts ride along in a ``deliveries`` array (``$push`` with ``$slice``), so a purge
deletes them with it. A claim is a lease (``leaseOwner``/``leaseUntil``) that leaves ``status`` alone;
``start`` turns Running only the documents still leased to the runner at the ``revision`` it holds, and every
later write by a runner names the owner in its filter, so a runner whose lease was taken over, or whose timer
a person cancelled or changed, writes nothing.

A runner's batches (claim, start, renew, release) are one ``update_many`` each. Its filter re-checks what
made each document eligible, and since update_many answers counts, not documents, what it changed is read
back by this owner's mark (``leaseOwner`` and the lease's end). Each query carries, word for word, the filter
of the partial index it relies on (``{leaseOwner: null}`` for free timers, ``{leaseOwner: {$type: "string"}}``
for held ones, ``{endedAt: {$type: "date"}}`` for ended ones): the server uses a partial index only for a
query it can prove is inside it.

Instants are BSON datetimes in UTC (millisecond precision, as the model keeps them). Documents are decoded
through the tolerant ``rows.decode_row``: a corrupt one reads as a Failed timer and is never handed to a
runner. The indexes, the partial filters and the layout version, with the migration of an older store run on
first open, are in ``mongo_schema``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import unquote_plus

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)

from timerctl.attempts import MAX_DELIVERIES_KEPT, Delivery, Outcome
from timerctl.model import BackendUnavailable, InvalidInput, Status, Timer, encode_payload, utc
from timerctl.redaction import one_line
from timerctl.stores.base import Filter, StoreBase
from timerctl.stores.mongo_schema import COLLECTION, ENDED, FREE, HELD, migrate
from timerctl.stores.rows import PLACEHOLDER_INSTANT, TIMER_FIELDS, Decoded, changed_fields, decode_row

DEFAULT_DATABASE = "timerctl"
_DUPLICATE_KEY = 11000
_ACCESS_DENIED = frozenset({13, 18})  # Unauthorized, AuthenticationFailed: wrong or missing credentials
_SCHEDULED, _RETRYING, _RUNNING = Status.SCHEDULED.value, Status.RETRYING.value, Status.RUNNING.value
_PENDING = [_SCHEDULED, _RETRYING]
#: Fields no query needs back: the attempts are read by ``deliveries`` alone.
_NO_HISTORY = {"deliveries": False}

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
        "revision": timer.revision,
        "endedAt": _maybe(timer.ended_at),
        "deliveryCount": timer.delivery_count,
        "onFailureUrl": timer.on_failure_url,
    }


#: A document's fields in ``Timer``'s order, as ``decode_row`` takes them. A missing count reads as 0:
#: documents of the first layout (or of another tool) have no revision or delivery count.
_KEYS = (
    "timerId", "webhookUrl", "expiryTime", "createdAt", "status", "payload", "attempts", "firedAt", "lastError",
    "dueAt", "leaseOwner", "leaseUntil", "revision", "endedAt", "deliveryCount", "onFailureUrl",
)  # fmt: skip
_COUNTS = frozenset({"attempts", "revision", "deliveryCount"})
_KEY_OF = dict(zip(TIMER_FIELDS, _KEYS, strict=True))


def _stored_instant(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError("not a BSON date")
    return _instant(value)


def _decode(doc: Document) -> Decoded:
    """The Timer of a document and None, or a Failed Timer and what is corrupt in the document."""
    return decode_row([doc.get(k, 0 if k in _COUNTS else None) for k in _KEYS], _stored_instant)


def _timer(doc: Document) -> Timer:
    """The Timer of a document; a corrupt one reads as Failed with the corruption in ``last_error``."""
    return _decode(doc)[0]


def _count_is(value: int) -> Any:
    """A filter on a count field: 0 matches a missing one too, which reads as 0."""
    return value if value else {"$in": [0, None]}


def _sort_key(doc: Document) -> datetime:
    due = doc.get("dueAt")
    return _instant(due) if isinstance(due, datetime) else PLACEHOLDER_INSTANT


def _delivery_doc(d: Delivery) -> Document:
    return {
        "attempt": d.attempt,
        "at": utc(d.at),
        "durationMs": d.duration_ms,
        "statusCode": d.status_code,
        "error": d.error,
        "response": d.response,
    }


def _delivery(entry: Any) -> Delivery | None:
    """The Delivery of a stored entry, or None for one another tool wrote in some other shape."""
    try:
        return Delivery(
            attempt=int(entry["attempt"]),
            at=_stored_instant(entry["at"]),
            duration_ms=int(entry["durationMs"]),
            status_code=entry.get("statusCode"),
            error=entry.get("error"),
            response=entry.get("response"),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _claimable(now: datetime, until: datetime) -> tuple[list[Document], list[Document]]:
    """What a claim may take, as two ``$or`` lists: free timers (served by ``claim_free`` in ``dueAt`` order)
    and timers whose lease lapsed (served by ``lease_holder``; few, sorted in memory).

    Pending timers due by ``until`` and Running ones (a runner died mid-POST), each either free or with a
    lease that is not a date at or after ``now`` (ended, missing, or not an instant at all).
    """
    due = {"status": {"$in": _PENDING}, "dueAt": {"$lte": until}}
    running = {"status": _RUNNING}
    lapsed = {"leaseOwner": HELD, "leaseUntil": {"$not": {"$gte": now}}}
    return [{"leaseOwner": FREE, **due}, {"leaseOwner": FREE, **running}], [{**lapsed, **due}, {**lapsed, **running}]


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
            migrate(db)

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
            doc = self._timers.find_one({"timerId": timer_id}, projection=_NO_HISTORY)
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
        # null in a filter matches a missing field too, as _decode reads one; a missing count reads 0.
        state: Document = {
            "timerId": old.timer_id,
            "status": old.status.value,
            "leaseOwner": old.lease_owner,
            "leaseUntil": _maybe(old.lease_until),
            "attempts": _count_is(old.attempts),
            "dueAt": utc(old.due_at),
            "revision": _count_is(old.revision),
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

    def _find(self, where: Filter, limit: int) -> list[Timer]:
        query: Document = {}
        if where.status is not None:
            query["status"] = where.status.value
        if where.due_before is not None:
            query["expiryTime"] = {"$lte": utc(where.due_before)}
        if where.ended_after is not None:
            query["endedAt"] = {**ENDED, "$gte": utc(where.ended_after)}
        if where.url_prefix is not None:
            # Anchored, every metacharacter escaped (re.escape's backslashes are literal in PCRE too).
            query["webhookUrl"] = {"$regex": "^" + re.escape(where.url_prefix)}
        with self._guard():
            cursor = self._timers.find(
                query,
                projection=_NO_HISTORY,
                sort=[("expiryTime", ASCENDING), ("timerId", ASCENDING)],
                limit=limit,
            )
            return [_timer(d) for d in cursor]

    def _claim(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        """The timers leased to ``owner``, oldest due first: the ``limit`` soonest due of both kinds of
        claimable timer, leased by one ``update_many`` that re-checks each is still claimable, then read back.

        A candidate another runner leased in between is not updated; only then is the search repeated, so
        a claim that lost races still takes what is left rather than returning short.
        """
        free, lapsed = _claimable(utc(now), utc(until))
        lease = {"leaseOwner": owner, "leaseUntil": utc(lease_until)}
        taken: list[Any] = []  # excluded from later rounds: a lease_until in the past must not loop

        def claims() -> Iterator[tuple[Any, Decoded]]:
            wanted = limit
            while wanted > 0:
                found: list[Document] = []
                for branches in (free, lapsed):
                    # A rooted $or, each branch index-served; what this call took is left out of each.
                    query = {"$or": [{**branch, "_id": {"$nin": taken}} for branch in branches] if taken else branches}
                    found += self._timers.find(
                        query, projection={"dueAt": True}, sort=[("dueAt", ASCENDING)], limit=wanted
                    )
                ids = [d["_id"] for d in sorted(found, key=_sort_key)[:wanted]]
                if not ids:
                    return
                matched = self._timers.update_many({"_id": {"$in": ids}, "$or": free + lapsed}, {"$set": lease})
                docs = list(self._timers.find({"_id": {"$in": ids}, **lease}, projection=_NO_HISTORY))
                taken.extend(ids)
                wanted -= len(docs)
                yield from ((doc["_id"], _decode(doc)) for doc in docs)
                if matched.matched_count == len(ids):
                    return  # nothing lost to another runner: nothing more is claimable

        def fail(key: Any, timer: Timer) -> None:
            # Failed by the same owner that holds it. Should this process die before this write, the
            # lease lapses and the next claim fails it.
            self._timers.update_one(
                {"_id": key, **lease},
                {
                    "$set": {
                        "status": Status.FAILED.value,
                        "lastError": timer.last_error,
                        "endedAt": utc(now),
                        "leaseOwner": None,
                        "leaseUntil": None,
                    }
                },
            )

        with self._guard():
            return self._keep_sound(claims(), fail)

    def _start(self, owner: str, timers: Sequence[Timer]) -> list[str]:
        by_revision: dict[int, list[str]] = {}
        for timer in timers:
            by_revision.setdefault(timer.revision, []).append(timer.timer_id)
        # Usually one revision (0) for the whole batch: one clause, served by the timerId index.
        held = [
            {"timerId": {"$in": ids}, "revision": _count_is(rev), "leaseOwner": owner}
            for rev, ids in by_revision.items()
        ]
        startable = {"$in": [*_PENDING, _RUNNING]}
        with self._guard():
            self._timers.update_many(
                {"$or": [{**h, "status": startable} for h in held]}, {"$set": {"status": _RUNNING}}
            )
            found = self._timers.find(
                {"$or": [{**h, "status": _RUNNING} for h in held]}, projection={"timerId": True, "_id": False}
            )
            started = {d["timerId"] for d in found}
        return [t.timer_id for t in timers if t.timer_id in started]

    def renew(self, owner: str, lease_until: datetime, ending_before: datetime | None = None) -> set[str]:
        # Served by lease_holder: the owner, then the end of its leases.
        held: Document = {
            "leaseOwner": {**HELD, "$eq": owner},
            "leaseUntil": ENDED if ending_before is None else {"$lt": utc(ending_before)},
        }
        renewed = {"leaseOwner": owner, "leaseUntil": utc(lease_until)}
        with self._guard():
            ids = [d["timerId"] for d in self._timers.find(held, projection={"timerId": True, "_id": False})]
            if not ids:
                return set()
            result = self._timers.update_many(
                {**held, "timerId": {"$in": ids}}, {"$set": {"leaseUntil": utc(lease_until)}}
            )
            if result.matched_count == len(ids):
                return set(ids)
            # Some were taken over or released in between: what now carries the new lease was renewed.
            found = self._timers.find({**renewed, "timerId": {"$in": ids}}, projection={"timerId": True, "_id": False})
            return {d["timerId"] for d in found}

    def _release(self, owner: str, timer_ids: Sequence[str]) -> int:
        # An update with a pipeline (MongoDB 4.2+): a started timer returns to the status it had before.
        before = {"$cond": [{"$gt": ["$attempts", 0]}, _RETRYING, _SCHEDULED]}
        status = {"$cond": [{"$eq": ["$status", _RUNNING]}, before, "$status"]}
        with self._guard():
            result = self._timers.update_many(
                {"timerId": {"$in": list(timer_ids)}, "leaseOwner": owner, "status": {"$in": [*_PENDING, _RUNNING]}},
                [{"$set": {"status": status, "leaseOwner": None, "leaseUntil": None}}],
            )
        return result.matched_count

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
                    "endedAt": _maybe(o.ended_at),
                    "leaseOwner": None,
                    "leaseUntil": None,
                }
                if o.due_at is not None:
                    changes["dueAt"] = utc(o.due_at)
                update: Document = {"$set": changes}
                if o.delivery is not None:
                    update["$inc"] = {"deliveryCount": 1}
                    kept = {"$each": [_delivery_doc(o.delivery)], "$slice": -MAX_DELIVERIES_KEPT}
                    update["$push"] = {"deliveries": kept}
                result = self._timers.update_one(
                    {"timerId": o.timer_id, "status": _RUNNING, "leaseOwner": owner}, update
                )
                if result.matched_count:
                    recorded.append(o.timer_id)
        return recorded

    def _deliveries(self, timer_id: str) -> list[Delivery]:
        with self._guard():
            doc = self._timers.find_one({"timerId": timer_id}, projection={"deliveries": True, "_id": False})
        entries = doc.get("deliveries") if doc is not None else None
        if not isinstance(entries, list):
            return []
        return [d for d in map(_delivery, entries) if d is not None]

    def _purge(self, statuses: Sequence[Status], ended_before: datetime, limit: int) -> int:
        # delete_many takes no limit: the batch is picked by id, and deleted only if still purgeable.
        where = _purgeable(statuses, ended_before)
        with self._guard():
            ids = [d["_id"] for d in self._timers.find(where, projection={"_id": True}, limit=limit)]
            if not ids:
                return 0
            return self._timers.delete_many({**where, "_id": {"$in": ids}}).deleted_count

    def _purgeable(self, statuses: Sequence[Status], ended_before: datetime) -> int:
        with self._guard():
            return self._timers.count_documents(_purgeable(statuses, ended_before))

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


def _purgeable(statuses: Sequence[Status], ended_before: datetime) -> Document:
    """The ended timers in ``statuses`` that ended before ``ended_before`` (served by the ``ended`` index)."""
    return {"status": {"$in": [s.value for s in statuses]}, "endedAt": {**ENDED, "$lt": utc(ended_before)}}

"""The embedded store: one SQLite file in WAL mode, shared safely by the CLI and several runners.

Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialise on SQLite's write lock
instead of failing half-way; claims are a single ``UPDATE ... RETURNING`` so two runners can never
take the same timer. Instants are stored as integer milliseconds since the epoch.

The file holds webhook URLs and payloads, so timerctl creates it ``0600`` (SQLite gives its ``-wal`` and
``-shm`` files the same mode) in folders it creates ``0700``. An existing file or folder keeps the mode
its owner chose (``doctor`` warns when others can read it). Rows are decoded through the tolerant
``rows.decode_row``: a corrupt row reads as a Failed timer and is never handed to a runner.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from timerctl.attempts import MAX_DELIVERIES_KEPT, Delivery, Outcome
from timerctl.model import MAX_STORED_INT, BackendUnavailable, Status, Timer, encode_payload, utc
from timerctl.stores.base import Filter, StoreBase
from timerctl.stores.rows import TIMER_FIELDS, Decoded, changed_fields, decode_row
from timerctl.stores.sqlite_schema import SCHEMA_VERSION, upgrade

_COLUMNS = (
    "timer_id, webhook_url, expiry_ms, created_ms, status, payload, attempts, fired_ms, last_error, "
    "due_ms, lease_owner, lease_until_ms, revision, ended_ms, delivery_count, on_failure_url"
)
_COLUMN_OF = dict(zip(TIMER_FIELDS, _COLUMNS.split(", "), strict=True))
_INSERT = f"INSERT OR IGNORE INTO timers ({_COLUMNS}) VALUES ({','.join('?' * len(TIMER_FIELDS))})"
_RENEW = (
    "UPDATE timers INDEXED BY timers_holder SET lease_until_ms = ? "
    "WHERE lease_owner IS NOT NULL AND lease_owner = ? AND lease_until_ms < ? RETURNING timer_id"
)
#: The state ``_swap`` compares; IS for the lease, which is NULL on every timer no runner holds.
_SWAP_WHERE = (
    "timer_id = ? AND status = ? AND lease_owner IS ? AND lease_until_ms IS ? AND attempts = ? AND due_ms = ? "
    "AND revision = ?"
)
_PENDING = "status IN ('Scheduled', 'Retrying')"
#: The rowids a claim takes: index-served parts instead of one OR, which SQLite would answer with a full
#: scan. A timer with an owner but no lease end, or Running without an owner (written so by hand or by
#: another tool), has no lease to wait out.
_CLAIMABLE = f"""
    SELECT rowid FROM (
        SELECT * FROM (
            SELECT rowid, due_ms FROM timers INDEXED BY timers_free
            WHERE lease_owner IS NULL AND {_PENDING} AND due_ms <= :until ORDER BY due_ms LIMIT :limit
        )
        UNION ALL
        SELECT rowid, due_ms FROM timers INDEXED BY timers_leased
        WHERE lease_owner IS NOT NULL AND lease_until_ms < :now
          AND (status = 'Running' OR ({_PENDING} AND due_ms <= :until))
        UNION ALL
        SELECT rowid, due_ms FROM timers INDEXED BY timers_leased
        WHERE lease_owner IS NOT NULL AND lease_until_ms IS NULL
          AND (status = 'Running' OR ({_PENDING} AND due_ms <= :until))
        UNION ALL
        SELECT rowid, due_ms FROM timers WHERE status = 'Running' AND lease_owner IS NULL
    ) ORDER BY due_ms LIMIT :limit
"""
_LEASE = "lease_owner = :owner, lease_until_ms = :lease"
#: The claimable rows as one JSON text: one step of the statement, not one per row (see ``_record``).
_CLAIM_READ = f"SELECT json_group_array(json_array(rowid, {_COLUMNS})) FROM timers WHERE rowid IN ({_CLAIMABLE})"
_CLAIM_WRITE = f"UPDATE timers SET {_LEASE} WHERE rowid IN (SELECT value FROM json_each(:rowids))"
#: The same claim a row at a time, for rows JSON cannot carry (a BLOB or bad UTF-8 written by another tool).
_CLAIM = f"""
    UPDATE timers SET {_LEASE} WHERE rowid IN ({_CLAIMABLE})
    RETURNING rowid, {_COLUMNS}
"""
#: Outcomes of timers the caller holds, as rows of (id, status, attempts, fired, error, due, ended, count);
#: a retry without a due keeps the timer's (``Outcome.apply``).
_COMPLETE = (
    "UPDATE timers SET status = o.column2, attempts = o.column3, fired_ms = o.column4, last_error = o.column5, "
    "due_ms = COALESCE(o.column6, due_ms), ended_ms = o.column7, delivery_count = o.column8, "
    "lease_owner = NULL, lease_until_ms = NULL FROM (VALUES {values}) AS o WHERE timers.timer_id = o.column1"
)
#: A started timer handed back returns to the status it had: Scheduled before its first attempt.
_RELEASE = (
    "UPDATE timers SET lease_owner = NULL, lease_until_ms = NULL, status = CASE status "
    "WHEN 'Running' THEN CASE attempts WHEN 0 THEN 'Scheduled' ELSE 'Retrying' END ELSE status END "
    "WHERE lease_owner = ? AND status IN ('Scheduled', 'Retrying', 'Running')"
)
_DELIVERY_COLUMNS = "timer_id, seq, attempt, at_ms, duration_ms, status_code, error, response"
_INSERT_DELIVERIES = f"INSERT OR REPLACE INTO deliveries ({_DELIVERY_COLUMNS}) VALUES {{values}}"


T = TypeVar("T")
MAX_MS = MAX_STORED_INT
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch, truncated like ``model.utc`` so every store keeps the same instant."""
    if dt.tzinfo is UTC:
        # Same floor as below without the copies; three per inserted row.
        delta = dt - _EPOCH
        return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    return (utc(dt) - _EPOCH) // _MS


def _maybe_ms(dt: datetime | None) -> int | None:
    return to_ms(dt) if dt is not None else None


def from_ms(ms: int) -> datetime:
    # Integer arithmetic: ms / 1000 as a float comes back a microsecond off from the year 2242 on.
    return _EPOCH + timedelta(milliseconds=ms)


def _row(timer: Timer) -> tuple[Any, ...]:
    return (
        timer.timer_id,
        timer.webhook_url,
        to_ms(timer.expiry_time),
        to_ms(timer.created_at),
        timer.status.value,
        encode_payload(timer.payload),
        timer.attempts,
        _maybe_ms(timer.fired_at),
        timer.last_error,
        to_ms(timer.due_at),
        timer.lease_owner,
        _maybe_ms(timer.lease_until),
        timer.revision,
        _maybe_ms(timer.ended_at),
        timer.delivery_count,
        timer.on_failure_url,
    )


def _stored_instant(ms: Any) -> datetime:
    """The instant of a stored column; TypeError/OverflowError for anything but integer milliseconds in range."""
    if type(ms) is not int:
        raise TypeError("not integer milliseconds")
    return from_ms(ms)


def _decode(row: Sequence[Any]) -> Decoded:
    """The Timer of a row and None, or a Failed Timer and what is corrupt in the row."""
    return decode_row(tuple(row), _stored_instant)


def _timer(row: Sequence[Any]) -> Timer:
    """The Timer of a row; a corrupt row reads as Failed with the corruption in ``last_error``."""
    return _decode(row)[0]


def create_private(path: str) -> None:
    """Create ``path``'s missing folders ``0700`` and the file itself ``0600``, before SQLite opens it.

    SQLite would create the file with the umask's mode (usually world-readable) and its ``-wal``/``-shm``
    with the file's. Only what this call creates is given a mode: an existing folder or file is left as
    its owner set it. A concurrent creator winning a race is fine (FileExistsError is ignored).
    """
    target = Path(path)
    missing = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # the umask may have taken bits away; ours is exactly owner-only
    with suppress(FileExistsError):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SqliteStore(StoreBase):
    """Store on a local SQLite file (created with its folder on first use)."""

    def __init__(self, path: str, busy_timeout: float = 30.0) -> None:
        self.path = path
        try:
            if path != ":memory:" and not path.startswith("file:"):
                create_private(path)
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable(f"cannot open the timer store at {path}: {exc}") from exc
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise BackendUnavailable(f"cannot open the timer store at {path}: {exc}") from exc
        except BaseException:  # a file of a newer schema, or a migration that failed: not left open
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Bring the file to ``SCHEMA_VERSION`` (``sqlite_schema``) in one transaction, when it is not there yet."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._tx() as db:
            upgrade(db, to_ms(datetime.now(UTC)))

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from the start (no upgrade deadlocks).

        ``durable=False`` commits without waiting for the disk (``synchronous=NORMAL``: still atomic and in
        order, but the last commits may be lost on power loss): for leases and starts, whose loss only
        means a timer is claimed again, never lost.
        """
        with self._lock:
            try:
                if not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._restore(durable)
                raise BackendUnavailable(f"timer store {self.path} is unavailable: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise BackendUnavailable(f"timer store {self.path} is unavailable: {exc}") from exc
            except BaseException:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._restore(durable)

    def _restore(self, durable: bool) -> None:
        if not durable:
            with suppress(sqlite3.Error):
                self._db.execute("PRAGMA synchronous=FULL")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"timer store {self.path} is unavailable: {exc}") from exc

    def _get(self, timer_id: str) -> Decoded | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM timers WHERE timer_id = ?", (timer_id,))
        return _decode(rows[0]) if rows else None

    def _insert_new(self, timer: Timer) -> bool:
        with self._tx() as db:
            return db.execute(_INSERT, _row(timer)).rowcount == 1  # 0 when the id was there

    def _swap(self, old: Timer, new: Timer) -> bool:
        values = dict(zip(TIMER_FIELDS, _row(new), strict=True))
        changed = changed_fields(old, new)
        sets = ", ".join(f"{_COLUMN_OF[name]} = ?" for name in changed)
        state = (
            old.status.value,
            old.lease_owner,
            _maybe_ms(old.lease_until),
            old.attempts,
            to_ms(old.due_at),
            old.revision,
        )
        with self._tx() as db:
            cursor = db.execute(
                f"UPDATE timers SET {sets} WHERE {_SWAP_WHERE}",
                (*(values[name] for name in changed), old.timer_id, *state),
            )
            return cursor.rowcount == 1

    def _insert_many(self, timers: Sequence[Timer]) -> int:
        with self._tx() as db:
            before = db.total_changes
            db.executemany(_INSERT, [_row(t) for t in timers])
            return db.total_changes - before

    def _find(self, where: Filter, limit: int) -> list[Timer]:
        terms: list[str] = []
        args: list[Any] = []
        if where.status is not None:
            terms.append("status = ?")
            args.append(where.status.value)
        if where.due_before is not None:
            terms.append("expiry_ms <= ?")
            args.append(to_ms(where.due_before))
        if where.ended_after is not None:
            terms.append("ended_ms >= ?")
            args.append(to_ms(where.ended_after))
        if where.url_prefix is not None:
            terms.append("substr(webhook_url, 1, ?) = ?")  # not LIKE: a prefix may hold % and _
            args += [len(where.url_prefix), where.url_prefix]
        clause = f"WHERE {' AND '.join(terms)}" if terms else ""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM timers {clause} ORDER BY expiry_ms, timer_id LIMIT ?", [*args, limit]
        )
        return [_timer(r) for r in rows]

    def _claim(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        lease_ms, now_ms = to_ms(lease_until), to_ms(now)
        args = {"owner": owner, "lease": lease_ms, "until": to_ms(until), "now": now_ms, "limit": limit}
        with self._tx(durable=False) as db:
            try:
                found = json.loads(db.execute(_CLAIM_READ, args).fetchone()[0])
            except (sqlite3.Error, ValueError):
                rows = db.execute(_CLAIM, args).fetchall()
            else:
                db.execute(_CLAIM_WRITE, {**args, "rowids": json.dumps([r[0] for r in found])})
                # As RETURNING would have read them: with the lease just written.
                rows = [(*r[:11], owner, lease_ms, *r[13:]) for r in found]
            corrupt: list[tuple[str | None, int, int]] = []

            def fail(rowid: int, timer: Timer) -> None:
                corrupt.append((timer.last_error, now_ms, rowid))

            claimed = ((rowid, _decode(row)) for rowid, *row in rows)
            sound = self._keep_sound(claimed, fail)
            # By rowid (the id may be what is corrupt), in the claim's own transaction.
            db.executemany(
                "UPDATE timers SET status = 'Failed', last_error = ?, ended_ms = ?, lease_owner = NULL, "
                "lease_until_ms = NULL WHERE rowid = ?",
                corrupt,
            )
        return sound

    def _start(self, owner: str, timers: Sequence[Timer]) -> list[str]:
        started: list[str] = []
        with self._tx(durable=False) as db:
            for chunk in _chunks(timers, 400):
                pairs = ",".join("(?,?)" for _ in chunk)
                args: list[Any] = [a for t in chunk for a in (t.timer_id, t.revision)]
                changed = db.execute(
                    f"UPDATE timers SET status = 'Running' FROM (VALUES {pairs}) AS held "
                    "WHERE timers.timer_id = held.column1 AND timers.revision = held.column2 "
                    "AND +timers.lease_owner = ? AND timers.status IN ('Scheduled', 'Retrying', 'Running')",
                    (*args, owner),
                ).rowcount
                if changed == len(chunk):  # the usual case: nothing refused, nothing to read back
                    started += [t.timer_id for t in chunk]
                    continue
                started += _json_ids(
                    db,
                    f"SELECT json_group_array(timers.timer_id) FROM timers JOIN (VALUES {pairs}) AS held "
                    "ON timers.timer_id = held.column1 AND timers.revision = held.column2 "
                    "WHERE +timers.lease_owner = ? AND +timers.status = 'Running'",
                    (*args, owner),
                )
        return started

    def renew(self, owner: str, lease_until: datetime, ending_before: datetime | None = None) -> set[str]:
        limit = to_ms(ending_before) if ending_before is not None else MAX_MS
        with self._tx(durable=False) as db:
            rows = db.execute(_RENEW, (to_ms(lease_until), owner, limit)).fetchall()
        return {r[0] for r in rows}

    def _release(self, owner: str, timer_ids: Sequence[str]) -> int:
        released = 0
        with self._tx(durable=False) as db:
            for chunk in _chunks(timer_ids):
                marks = ",".join("?" * len(chunk))
                cur = db.execute(
                    f"{_RELEASE} AND timer_id IN ({marks})",
                    (owner, *chunk),
                )
                released += cur.rowcount
        return released

    def _complete(self, owner: str, outcomes: Sequence[Outcome]) -> list[str]:
        recorded: list[str] = []
        with self._tx() as db:
            for chunk in _chunks(list({o.timer_id: o for o in reversed(outcomes)}.values())[::-1], 300):
                marks = ",".join("?" * len(chunk))
                held = set(
                    _json_ids(
                        db,
                        # By id: the unary + keeps the planner off the owner's index (all it holds).
                        f"SELECT json_group_array(timer_id) FROM timers WHERE timer_id IN ({marks}) "
                        "AND +status = 'Running' AND +lease_owner = ?",
                        (*(o.timer_id for o in chunk), owner),
                    )
                )
                mine = [o for o in chunk if o.timer_id in held]
                if mine:
                    self._record(db, mine)
                    recorded += [o.timer_id for o in mine]
        return recorded

    def _record(self, db: sqlite3.Connection, outcomes: list[Outcome]) -> None:
        """Write ``outcomes`` (of timers this owner holds, one each) and their deliveries: one statement for
        the timers and one for the deliveries, not one per outcome.

        Why: the sqlite3 module lets go of the GIL at every step of a statement, and the firing thread takes
        it each time for up to the switch interval, so a statement per outcome made a batch of 800 outcomes
        hold the store's lock for 100 ms and more — and a start commit waiting behind it missed its instant.
        """
        counts = _counts(db, [o.timer_id for o in outcomes if o.delivery_count is None])
        rows: list[Any] = []
        history: list[Any] = []
        trim: list[tuple[str, int]] = []
        for o in outcomes:
            d = o.delivery
            fired, due, ended = o.fired_at, o.due_at, o.ended_at
            count = o.delivery_count
            if count is None:
                count = counts.get(o.timer_id, 0) + (d is not None)
            rows += (
                o.timer_id,
                o.status.value,
                o.attempts,
                None if fired is None else to_ms(fired),
                o.last_error,
                None if due is None else to_ms(due),
                None if ended is None else to_ms(ended),
                count,
            )
            if d is not None:
                history += (
                    o.timer_id,
                    count,
                    d.attempt,
                    to_ms(d.at),
                    d.duration_ms,
                    d.status_code,
                    d.error,
                    d.response,
                )
                if count > MAX_DELIVERIES_KEPT:
                    trim.append((o.timer_id, count - MAX_DELIVERIES_KEPT))
        db.execute(_COMPLETE.format(values=",".join(["(?,?,?,?,?,?,?,?)"] * len(outcomes))), rows)
        if history:
            db.execute(_INSERT_DELIVERIES.format(values=",".join(["(?,?,?,?,?,?,?,?)"] * (len(history) // 8))), history)
        if trim:
            db.executemany("DELETE FROM deliveries WHERE timer_id = ? AND seq <= ?", trim)

    def _deliveries(self, timer_id: str) -> list[Delivery]:
        rows = self._query(
            "SELECT attempt, at_ms, duration_ms, status_code, error, response FROM deliveries "
            "WHERE timer_id = ? ORDER BY seq",
            (timer_id,),
        )
        return [Delivery(a, from_ms(at), dur, code, err, resp) for a, at, dur, code, err, resp in rows]

    def _purge(self, statuses: Sequence[Status], ended_before: datetime, limit: int) -> int:
        # Three statements of one step each, whatever the batch (see ``_record``): a DELETE ... RETURNING and
        # a delete per timer's deliveries held the lock for 100 ms a batch while a runner fired.
        marks = ",".join("?" * len(statuses))
        with self._tx() as db:
            (rowids,) = db.execute(
                "SELECT json_group_array(rowid) FROM (SELECT rowid FROM timers INDEXED BY timers_ended "
                f"WHERE ended_ms IS NOT NULL AND ended_ms < ? AND status IN ({marks}) LIMIT ?)",
                (to_ms(ended_before), *(s.value for s in statuses), limit),
            ).fetchone()
            picked = "SELECT value FROM json_each(?)"
            db.execute(
                f"DELETE FROM deliveries WHERE timer_id IN (SELECT timer_id FROM timers WHERE rowid IN ({picked}))",
                (rowids,),
            )
            return db.execute(f"DELETE FROM timers WHERE rowid IN ({picked})", (rowids,)).rowcount

    def _purgeable(self, statuses: Sequence[Status], ended_before: datetime) -> int:
        marks = ",".join("?" * len(statuses))
        rows = self._query(
            "SELECT COUNT(*) FROM timers INDEXED BY timers_ended "
            f"WHERE ended_ms IS NOT NULL AND ended_ms < ? AND status IN ({marks})",
            (to_ms(ended_before), *(s.value for s in statuses)),
        )
        return int(rows[0][0])

    def _count_statuses(self) -> list[tuple[Any, int]]:
        return self._query("SELECT status, COUNT(*) FROM timers GROUP BY status")

    def ping(self) -> None:
        self._query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _json_ids(db: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[str]:
    """The ids a ``json_group_array`` query selects: one row, one step of the statement, however many ids."""
    return [str(tid) for tid in json.loads(db.execute(sql, args).fetchone()[0])]


def _counts(db: sqlite3.Connection, timer_ids: list[str]) -> dict[str, int]:
    """The ``delivery_count`` of each of these timers (for outcomes that do not carry theirs)."""
    if not timer_ids:
        return {}
    marks = ",".join("?" * len(timer_ids))
    rows = db.execute(f"SELECT timer_id, delivery_count FROM timers WHERE timer_id IN ({marks})", timer_ids)
    return {tid: n for tid, n in rows}


def _chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Slices small enough for SQLite's bound-parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]

"""The embedded store: one SQLite file in WAL mode, shared safely by the CLI and several runners.

Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialise on SQLite's write lock
instead of failing half-way; claims are a single ``UPDATE ... RETURNING`` so two runners can never
take the same timer. Instants are stored as integer milliseconds since the epoch.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from timerctl.model import BackendUnavailable, NotFound, Status, Timer, cancel, encode_payload, utc
from timerctl.stores.base import Outcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS timers (
    timer_id       TEXT PRIMARY KEY,
    webhook_url    TEXT NOT NULL,
    expiry_ms      INTEGER NOT NULL,
    created_ms     INTEGER NOT NULL,
    status         TEXT NOT NULL,
    payload        TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    fired_ms       INTEGER,
    last_error     TEXT,
    due_ms         INTEGER NOT NULL,
    lease_owner    TEXT,
    lease_until_ms INTEGER
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (status, due_ms);
CREATE INDEX IF NOT EXISTS timers_lease ON timers (status, lease_until_ms);
CREATE INDEX IF NOT EXISTS timers_expiry ON timers (expiry_ms);
"""

_COLUMNS = (
    "timer_id, webhook_url, expiry_ms, created_ms, status, payload, attempts, fired_ms, last_error, "
    "due_ms, lease_owner, lease_until_ms"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch, truncated like ``model.utc`` so every store keeps the same instant."""
    if dt.tzinfo is UTC:
        # Same floor as below without the copies; three per inserted row.
        delta = dt - _EPOCH
        return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    return (utc(dt) - _EPOCH) // _MS


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
        to_ms(timer.fired_at) if timer.fired_at else None,
        timer.last_error,
        to_ms(timer.due_at),
        timer.lease_owner,
        to_ms(timer.lease_until) if timer.lease_until else None,
    )


def _timer(row: sqlite3.Row | tuple[Any, ...]) -> Timer:
    (tid, url, expiry, created, status, payload, attempts, fired, error, due, owner, lease) = tuple(row)
    return Timer(
        timer_id=tid,
        webhook_url=url,
        expiry_time=from_ms(expiry),
        created_at=from_ms(created),
        status=Status(status),
        payload=json.loads(payload) if payload is not None else None,
        attempts=attempts,
        fired_at=from_ms(fired) if fired is not None else None,
        last_error=error,
        due_at=from_ms(due),
        lease_owner=owner,
        lease_until=from_ms(lease) if lease is not None else None,
    )


class SqliteStore:
    """Store on a local SQLite file (created with its folder on first use)."""

    def __init__(self, path: str, busy_timeout: float = 30.0) -> None:
        self.path = path
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable(f"cannot open the timer store at {path}: {exc}") from exc
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from the start (no upgrade deadlocks)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
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

    def _read(self, sql: str, args: Sequence[Any] = ()) -> builtins.list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"timer store {self.path} is unavailable: {exc}") from exc

    def insert(self, timer: Timer) -> Timer:
        with self._tx() as db:
            db.execute(f"INSERT OR IGNORE INTO timers ({_COLUMNS}) VALUES ({','.join('?' * 12)})", _row(timer))
            row = db.execute(f"SELECT {_COLUMNS} FROM timers WHERE timer_id = ?", (timer.timer_id,)).fetchone()
        return _timer(row)

    def insert_many(self, timers: Sequence[Timer]) -> int:
        if not timers:
            return 0
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                f"INSERT OR IGNORE INTO timers ({_COLUMNS}) VALUES ({','.join('?' * 12)})", [_row(t) for t in timers]
            )
            return db.total_changes - before

    def get(self, timer_id: str) -> Timer | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM timers WHERE timer_id = ?", (timer_id,))
        return _timer(rows[0]) if rows else None

    def list(
        self, status: Status | None = None, limit: int = 100, due_before: datetime | None = None
    ) -> builtins.list[Timer]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if due_before is not None:
            where.append("expiry_ms <= ?")
            args.append(to_ms(due_before))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM timers {clause} ORDER BY expiry_ms, timer_id LIMIT ?", [*args, limit]
        )
        return [_timer(r) for r in rows]

    def cancel(self, timer_id: str, fallback: Timer | None = None) -> Timer:
        with self._tx() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM timers WHERE timer_id = ?", (timer_id,)).fetchone()
            if row is None:
                if fallback is None or fallback.timer_id != timer_id:
                    raise NotFound(timer_id)
                done = cancel(fallback)
                db.execute(f"INSERT INTO timers ({_COLUMNS}) VALUES ({','.join('?' * 12)})", _row(done))
                return done
            done = cancel(_timer(row))
            db.execute(
                "UPDATE timers SET status = ?, lease_owner = NULL, lease_until_ms = NULL WHERE timer_id = ?",
                (done.status.value, timer_id),
            )
            return done

    def claim_due(
        self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[Timer]:
        if limit <= 0:
            return []
        # Two index-served halves instead of one OR, which SQLite would answer with a full scan.
        sql = f"""
            UPDATE timers SET status = 'Running', lease_owner = ?, lease_until_ms = ?
            WHERE timer_id IN (
                SELECT timer_id FROM (
                    SELECT timer_id, due_ms FROM timers WHERE status = 'Scheduled' AND due_ms <= ?
                    UNION ALL
                    SELECT timer_id, due_ms FROM timers WHERE status = 'Running' AND lease_until_ms < ?
                ) ORDER BY due_ms LIMIT ?
            )
            RETURNING {_COLUMNS}
        """
        with self._tx() as db:
            rows = db.execute(sql, (owner, to_ms(lease_until), to_ms(until), to_ms(now), limit)).fetchall()
        return sorted((_timer(r) for r in rows), key=lambda t: (t.due_at, t.timer_id))

    def renew(self, owner: str, timer_ids: Sequence[str], lease_until: datetime) -> set[str]:
        held: set[str] = set()
        with self._tx() as db:
            for chunk in _chunks(timer_ids):
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"UPDATE timers SET lease_until_ms = ? WHERE status = 'Running' AND lease_owner = ? "
                    f"AND timer_id IN ({marks}) RETURNING timer_id",
                    (to_ms(lease_until), owner, *chunk),
                ).fetchall()
                held.update(r[0] for r in rows)
        return held

    def release(self, owner: str, timer_ids: Sequence[str]) -> int:
        released = 0
        with self._tx() as db:
            for chunk in _chunks(timer_ids):
                marks = ",".join("?" * len(chunk))
                cur = db.execute(
                    f"UPDATE timers SET status = 'Scheduled', lease_owner = NULL, lease_until_ms = NULL "
                    f"WHERE status = 'Running' AND lease_owner = ? AND timer_id IN ({marks})",
                    (owner, *chunk),
                )
                released += cur.rowcount
        return released

    def complete(self, owner: str, outcomes: Sequence[Outcome]) -> builtins.list[str]:
        recorded: list[str] = []
        with self._tx() as db:
            for o in outcomes:
                cur = db.execute(
                    "UPDATE timers SET status = ?, attempts = ?, fired_ms = ?, last_error = ?, "
                    "due_ms = COALESCE(?, due_ms), lease_owner = NULL, lease_until_ms = NULL "
                    "WHERE timer_id = ? AND status = 'Running' AND lease_owner = ?",
                    (
                        o.status.value,
                        o.attempts,
                        to_ms(o.fired_at) if o.fired_at else None,
                        o.last_error,
                        to_ms(o.due_at) if o.due_at else None,
                        o.timer_id,
                        owner,
                    ),
                )
                if cur.rowcount:
                    recorded.append(o.timer_id)
        return recorded

    def next_due(self) -> datetime | None:
        rows = self._read("SELECT MIN(due_ms) FROM timers WHERE status = 'Scheduled'")
        return from_ms(rows[0][0]) if rows and rows[0][0] is not None else None

    def counts(self) -> dict[Status, int]:
        rows = self._read("SELECT status, COUNT(*) FROM timers GROUP BY status")
        found = {Status(s): n for s, n in rows}
        return {s: found.get(s, 0) for s in Status}

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _chunks(ids: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """Slices small enough for SQLite's bound-parameter limit."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]

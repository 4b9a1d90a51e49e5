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

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from timerctl.model import BackendUnavailable, Outcome, Status, Timer, encode_payload, utc
from timerctl.stores.base import StoreBase
from timerctl.stores.rows import TIMER_FIELDS, Decoded, changed_fields, decode_row

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
CREATE INDEX IF NOT EXISTS timers_owner ON timers (lease_owner) WHERE status = 'Running';
"""

_COLUMNS = (
    "timer_id, webhook_url, expiry_ms, created_ms, status, payload, attempts, fired_ms, last_error, "
    "due_ms, lease_owner, lease_until_ms"
)
_COLUMN_OF = dict(zip(TIMER_FIELDS, _COLUMNS.split(", "), strict=True))
_INSERT = f"INSERT OR IGNORE INTO timers ({_COLUMNS}) VALUES ({','.join('?' * 12)})"
#: ``status = 'Running'`` as a literal: what lets SQLite prove the partial index ``timers_owner`` applies.
_RENEW = "UPDATE timers SET lease_until_ms = ? WHERE status = 'Running' AND lease_owner = ? RETURNING timer_id"
#: The state ``_swap`` compares; IS for the lease, which is NULL on every timer not Running.
_SWAP_WHERE = "timer_id = ? AND status = ? AND lease_owner IS ? AND lease_until_ms IS ? AND attempts = ? AND due_ms = ?"


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
        state = (old.status.value, old.lease_owner, _maybe_ms(old.lease_until), old.attempts, to_ms(old.due_at))
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

    def _find(self, status: Status | None, limit: int, due_before: datetime | None) -> list[Timer]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if due_before is not None:
            where.append("expiry_ms <= ?")
            args.append(to_ms(due_before))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM timers {clause} ORDER BY expiry_ms, timer_id LIMIT ?", [*args, limit]
        )
        return [_timer(r) for r in rows]

    def _claim(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        # Index-served parts instead of one OR, which SQLite would answer with a full scan. A Running
        # timer without a lease (written so by hand or by another tool) has no lease to wait out.
        sql = f"""
            UPDATE timers SET status = 'Running', lease_owner = ?, lease_until_ms = ?
            WHERE timer_id IN (
                SELECT timer_id FROM (
                    SELECT timer_id, due_ms FROM timers WHERE status = 'Scheduled' AND due_ms <= ?
                    UNION ALL
                    SELECT timer_id, due_ms FROM timers WHERE status = 'Running' AND lease_until_ms < ?
                    UNION ALL
                    SELECT timer_id, due_ms FROM timers WHERE status = 'Running' AND lease_until_ms IS NULL
                ) ORDER BY due_ms LIMIT ?
            )
            RETURNING rowid, {_COLUMNS}
        """
        with self._tx() as db:
            rows = db.execute(sql, (owner, to_ms(lease_until), to_ms(until), to_ms(now), limit)).fetchall()

            def fail(rowid: int, timer: Timer) -> None:
                # By rowid (the id may be what is corrupt), in the claim's own transaction.
                db.execute(
                    "UPDATE timers SET status = 'Failed', last_error = ?, lease_owner = NULL, lease_until_ms = NULL "
                    "WHERE rowid = ?",
                    (timer.last_error, rowid),
                )

            return self._keep_sound(((rowid, _decode(row)) for rowid, *row in rows), fail)

    def renew(self, owner: str, lease_until: datetime) -> set[str]:
        with self._tx() as db:
            rows = db.execute(_RENEW, (to_ms(lease_until), owner)).fetchall()
        return {r[0] for r in rows}

    def _release(self, owner: str, timer_ids: Sequence[str]) -> int:
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

    def _complete(self, owner: str, outcomes: Sequence[Outcome]) -> list[str]:
        recorded: list[str] = []
        with self._tx() as db:
            for o in outcomes:
                # Outcome.apply's fields: a retry without a due_at keeps the timer's due.
                cur = db.execute(
                    "UPDATE timers SET status = ?, attempts = ?, fired_ms = ?, last_error = ?, "
                    "due_ms = COALESCE(?, due_ms), lease_owner = NULL, lease_until_ms = NULL "
                    "WHERE timer_id = ? AND status = 'Running' AND lease_owner = ?",
                    (
                        o.status.value,
                        o.attempts,
                        _maybe_ms(o.fired_at),
                        o.last_error,
                        _maybe_ms(o.due_at),
                        o.timer_id,
                        owner,
                    ),
                )
                if cur.rowcount:
                    recorded.append(o.timer_id)
        return recorded

    def _count_statuses(self) -> list[tuple[Any, int]]:
        return self._query("SELECT status, COUNT(*) FROM timers GROUP BY status")

    def ping(self) -> None:
        self._query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _chunks(ids: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """Slices small enough for SQLite's bound-parameter limit."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]

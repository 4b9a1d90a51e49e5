"""The SQLite store's schema and its migrations: the tables, the indexes each query relies on, and how a
file of an older timerctl is brought up to date.

Kept apart from ``sqlite.py`` because it changes for other reasons (a new field, a new query's index) and
is read once per file, not per statement. ``PRAGMA user_version`` holds the version a file has; a file of
a newer version than this code knows is refused, never written to.
"""

from __future__ import annotations

import sqlite3

_TABLES = """
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
    lease_until_ms INTEGER,
    revision       INTEGER NOT NULL DEFAULT 0,
    ended_ms       INTEGER,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    on_failure_url TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    timer_id    TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    response    TEXT,
    PRIMARY KEY (timer_id, seq)
) WITHOUT ROWID;
"""
#: Columns added to ``timers`` since the first schema, each with what an older row reads as.
_ADDED_COLUMNS = {
    "revision": "INTEGER NOT NULL DEFAULT 0",
    "ended_ms": "INTEGER",
    "delivery_count": "INTEGER NOT NULL DEFAULT 0",
    "on_failure_url": "TEXT",
}
#: Bumped with every change of the schema; ``PRAGMA user_version`` holds the one a file has.
SCHEMA_VERSION = 2
#: Each query names the index it relies on (``INDEXED BY``), so a planner change is an error, not a scan.
#: The partial indexes hold only the rows their query looks for: ``timers_free`` the pending timers no
#: runner holds, ``timers_leased``/``timers_holder`` the held ones, ``timers_ended`` the ended ones.
_INDEXES = """
CREATE INDEX IF NOT EXISTS timers_due ON timers (status, due_ms);
CREATE INDEX IF NOT EXISTS timers_expiry ON timers (expiry_ms);
CREATE INDEX IF NOT EXISTS timers_free ON timers (due_ms)
    WHERE lease_owner IS NULL AND status IN ('Scheduled', 'Retrying');
CREATE INDEX IF NOT EXISTS timers_leased ON timers (lease_until_ms) WHERE lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS timers_holder ON timers (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS timers_ended ON timers (ended_ms) WHERE ended_ms IS NOT NULL;
"""
#: Indexes of the first schema that no query uses any more.
_DROPPED_INDEXES = ("timers_lease", "timers_owner")


def upgrade(db: sqlite3.Connection, now_ms: int) -> None:
    """Bring the file to ``SCHEMA_VERSION`` inside the caller's write transaction: tables, added columns,
    indexes; DatabaseError for a file of a newer schema.

    Ended timers of a file older than retention get ``ended_ms`` from when they fired (or were due, but no
    later than ``now_ms``: a timer cancelled long before its instant ended before the migration), so
    retention can delete them too.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"the file has schema version {version}; this timerctl knows up to {SCHEMA_VERSION}"
        )
    if version == SCHEMA_VERSION:
        return
    for statement in _TABLES.split(";"):
        if statement.strip():
            db.execute(statement)
    present = {row[1] for row in db.execute("PRAGMA table_info(timers)")}
    for column, kind in _ADDED_COLUMNS.items():
        if column not in present:
            db.execute(f"ALTER TABLE timers ADD COLUMN {column} {kind}")
    for index in _DROPPED_INDEXES:
        db.execute(f"DROP INDEX IF EXISTS {index}")
    for statement in _INDEXES.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(
        "UPDATE timers SET ended_ms = MIN(COALESCE(fired_ms, due_ms), ?) "
        "WHERE ended_ms IS NULL AND status IN ('Finished', 'Failed', 'Cancelled')",
        (now_ms,),
    )
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

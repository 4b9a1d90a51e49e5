"""What only SqliteStore does: its files are private, its hot statements use their indexes, a file of the
first schema is migrated (and one of a newer schema refused), a closed one says so.

The SQLite store holds webhook URLs and payloads: made ``0600`` (with ``-wal``/``-shm``) in folders made
``0700``; what exists already keeps the mode its owner gave it (``doctor`` pointing out a store file
others can read is in ``test_cli_doctor.py``). The file tests fix the umask to the usual 022, under which
SQLite alone would create a world-readable file. The contract every store keeps is in ``test_store_contract.py``.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from tests.factories import make_timer
from tests.fixtures_cli import Cli
from tests.fixtures_stores import MS, SEC, T0, make
from timerctl.attempts import Outcome
from timerctl.model import BackendUnavailable, Status
from timerctl.stores.sqlite import SqliteStore, to_ms

MINUTE = timedelta(minutes=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("usual_umask")
def test_a_new_store_is_private_with_its_wal_and_shm(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    db = tmp_path / "new" / "deeper" / "timers.db"
    store = SqliteStore(str(db))
    store.ping()  # nothing written: the WAL files exist from the first connection on
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert path.exists(), path
        assert mode(path) == 0o600, f"{path.name} is {mode(path):04o}"
    assert mode(db.parent) == 0o700
    assert mode(db.parent.parent) == 0o700
    assert mode(tmp_path) == 0o755  # it existed: not ours to change
    store.close()


@pytest.mark.usefixtures("usual_umask")
def test_existing_folders_and_files_keep_their_modes(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    store = SqliteStore(str(shared / "timers.db"))
    store.close()
    assert mode(shared) == 0o755
    assert mode(shared / "timers.db") == 0o600

    (shared / "group.db").touch()
    (shared / "group.db").chmod(0o640)
    store = SqliteStore(str(shared / "group.db"))
    store.ping()
    store.close()
    assert mode(shared / "group.db") == 0o640


@pytest.mark.usefixtures("usual_umask")
def test_the_default_store_made_by_a_command_is_private(cli: Cli, default_store: Path, tmp_path: Path) -> None:
    result = cli("create", "--url", "https://hooks.example.com/x", "--in", "1h", "--json")
    assert (result.code, result.err) == (0, "")
    assert mode(default_store) == 0o600
    assert mode(default_store.parent) == 0o700  # data/timerctl
    assert mode(tmp_path / "data") == 0o700  # XDG_DATA_HOME did not exist either


# --- each hot statement is served by its index -------------------------------------------------------


def statements(store: SqliteStore, call: Callable[[], object]) -> list[str]:
    """The statements ``call`` runs on ``store``'s connection, values bound in; transaction control left out."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    try:
        call()
    finally:
        store._db.set_trace_callback(None)
    return [sql for sql in seen if not sql.startswith(("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"))]


def plan(store: SqliteStore, sql: str) -> list[str]:
    """What SQLite's planner would do for ``sql`` (asked on a connection of its own: nothing is run)."""
    with closing(sqlite3.connect(store.path)) as db:
        return [row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def full_scans(steps: list[str]) -> list[str]:
    return [step for step in steps if step.startswith(("SCAN timers", "SCAN deliveries"))]


@pytest.fixture
def busy(store: SqliteStore) -> SqliteStore:
    """The store holding a timer in each state the hot statements look for."""
    store.insert_many(
        [
            make("due", T0),
            make("held", T0, lease_owner="r1", lease_until=T0 + SEC),
            make("done", T0 - MINUTE, status=Status.FINISHED, ended_at=T0 - MINUTE),
        ]
    )
    return store


def test_sqlite_claim_is_served_by_an_index_for_each_kind_of_claimable_timer(busy: SqliteStore) -> None:
    # Read as one JSON text, then leased by rowid: two statements, one step each.
    [read, write] = statements(busy, lambda: busy.claim_due("r2", T0, T0, T0 + 30 * SEC, 10))
    assert "SEARCH timers USING INTEGER PRIMARY KEY (rowid=?)" in plan(busy, write)
    assert full_scans(plan(busy, write)) == []
    steps = plan(busy, read)
    assert "SEARCH timers USING INDEX timers_free (due_ms<?)" in steps, "free pending timers"
    assert "SEARCH timers USING INDEX timers_leased (lease_until_ms<?)" in steps, "lapsed leases"
    assert "SEARCH timers USING INDEX timers_leased (lease_until_ms=?)" in steps, "an owner but no lease end"
    assert "SEARCH timers USING INDEX timers_due (status=?)" in steps, "Running without an owner"
    assert full_scans(steps) == []


@pytest.mark.parametrize(
    ("name", "call", "index"),
    [
        ("renew", lambda s: s.renew("r1", T0 + MINUTE, T0 + 30 * SEC), "timers_holder (lease_owner=?)"),
        ("purge", lambda s: s.purge([Status.FINISHED], T0, 10), "timers_ended (ended_ms>? AND ended_ms<?)"),
        ("purgeable", lambda s: s.purgeable([Status.FINISHED], T0), "timers_ended (ended_ms>? AND ended_ms<?)"),
        ("start", lambda s: s.start("r1", [make("held", T0)]), "sqlite_autoindex_timers_1 (timer_id=?)"),
        ("release", lambda s: s.release("r1", ["held"]), "sqlite_autoindex_timers_1 (timer_id=?)"),
    ],
)
def test_sqlite_runner_statements_are_served_by_their_index(
    busy: SqliteStore, name: str, call: Callable[[SqliteStore], object], index: str
) -> None:
    [sql, *rest] = statements(busy, lambda: call(busy))
    steps = plan(busy, sql)
    assert f"SEARCH timers USING INDEX {index}" in steps, (name, steps)
    assert full_scans(steps) == []
    for other in rest:  # what the first statement picked, then the purged timers' deliveries: by their keys
        steps = plan(busy, other)
        assert full_scans(steps) == [], (name, other, steps)
        assert any(" USING PRIMARY KEY " in step or " USING INTEGER PRIMARY KEY " in step for step in steps), steps


# --- the file of the first schema -----------------------------------------------------------------------

#: The first schema (timerctl before issue 13) exactly as it created its files; user_version left 0.
FIRST_SCHEMA = """
CREATE TABLE timers (
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
CREATE INDEX timers_due ON timers (status, due_ms);
CREATE INDEX timers_lease ON timers (status, lease_until_ms);
CREATE INDEX timers_expiry ON timers (expiry_ms);
CREATE INDEX timers_owner ON timers (lease_owner) WHERE status = 'Running';
"""
#: A past instant: the migration caps an end at its own clock's now.
P0 = datetime(2021, 1, 1, tzinfo=UTC)
#: ``old(timer_id, due, **fields)``: a timer as the first schema's rows below read back, created an hour before P0.
old = partial(make_timer, now=P0 - timedelta(hours=1), created_at=P0 - timedelta(hours=1))
#: Timers as the first schema held them: (id, status, payload, attempts, fired, error, due, owner, lease until).
FIRST_ROWS = [
    ("done", "Finished", '{"n":1}', 1, P0 - 2 * MINUTE, None, P0 - 3 * MINUTE, None, None),
    ("waiting", "Scheduled", None, 0, None, None, P0 + MINUTE, None, None),
    ("posting", "Running", None, 2, P0 - MINUTE, "HTTP 503", P0 - SEC, "old-runner", P0 + 30 * SEC),
    ("never", "Cancelled", None, 0, None, None, datetime(2100, 1, 1, tzinfo=UTC), None, None),
]


def first_schema_file(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(FIRST_SCHEMA)
        for tid, status, payload, attempts, fired, error, due, owner, lease in FIRST_ROWS:
            db.execute(
                "INSERT INTO timers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    tid,
                    f"https://hooks.example.com/{tid}",
                    to_ms(due),
                    to_ms(P0 - timedelta(hours=1)),
                    status,
                    payload,
                    attempts,
                    None if fired is None else to_ms(fired),
                    error,
                    to_ms(due),
                    owner,
                    None if lease is None else to_ms(lease),
                ),
            )


def schema_of(path: Path) -> tuple[int, list[str], set[str], set[str]]:
    """(user_version, the columns of timers, its indexes, the tables) of the file at ``path``."""
    with closing(sqlite3.connect(path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        columns = [row[1] for row in db.execute("PRAGMA table_info(timers)")]
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return version, columns, indexes, tables


def test_a_file_of_the_first_schema_is_migrated_and_every_timer_read(tmp_path: Path) -> None:
    path = tmp_path / "timers.db"
    first_schema_file(path)
    before = datetime.now(UTC)
    store = SqliteStore(str(path))
    after = datetime.now(UTC)
    version, columns, indexes, tables = schema_of(path)
    assert version == 2
    assert columns == [
        "timer_id", "webhook_url", "expiry_ms", "created_ms", "status", "payload", "attempts", "fired_ms",
        "last_error", "due_ms", "lease_owner", "lease_until_ms", "revision", "ended_ms", "delivery_count",
        "on_failure_url",
    ]  # fmt: skip
    assert indexes == {"timers_due", "timers_expiry", "timers_free", "timers_leased", "timers_holder", "timers_ended"}
    assert tables == {"timers", "deliveries"}

    done, waiting, posting, never = (store.get(tid) for tid in ("done", "waiting", "posting", "never"))
    assert done == old(
        "done", P0 - 3 * MINUTE, status=Status.FINISHED, payload={"n": 1}, attempts=1, fired_at=P0 - 2 * MINUTE,
        ended_at=P0 - 2 * MINUTE,
    )  # fmt: skip
    assert waiting == old("waiting", P0 + MINUTE)
    assert posting == old(
        "posting", P0 - SEC, status=Status.RUNNING, attempts=2, fired_at=P0 - MINUTE, last_error="HTTP 503",
        lease_owner="old-runner", lease_until=P0 + 30 * SEC,
    )  # fmt: skip
    # Cancelled long before its instant: it ended before the migration, not on its far-off instant.
    assert never is not None and never.status is Status.CANCELLED and never.ended_at is not None
    assert before - MS <= never.ended_at <= after
    assert all(store.deliveries(tid) == [] for tid in ("done", "waiting", "posting", "never"))

    # And the life goes on: the Running timer is taken over once its lease lapses, then recorded.
    now = P0 + 31 * SEC
    taken = store.claim_due("r1", now, now, now + 30 * SEC, 10)
    assert [t.timer_id for t in taken] == ["posting"]
    assert store.start("r1", taken) == ["posting"]
    assert store.complete("r1", [Outcome("posting", Status.FINISHED, 3, fired_at=now, ended_at=now)]) == ["posting"]
    assert store.purge([Status.FINISHED], P0, 10) == 1, "the migrated Finished timer falls to retention"
    store.close()

    reopened = SqliteStore(str(path))
    assert schema_of(path) == (version, columns, indexes, tables)
    assert reopened.get("waiting") == waiting
    reopened.close()


def test_a_file_of_a_newer_schema_is_refused_in_one_line_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "timers.db"
    SqliteStore(str(path)).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA user_version = 3")
    with pytest.raises(BackendUnavailable) as info:
        SqliteStore(str(path))
    message = str(info.value)
    assert "timers.db" in message and "schema version 3" in message and "knows up to 2" in message
    assert "\n" not in message
    assert schema_of(path)[0] == 3


def test_sqlite_ping_on_a_closed_store_is_backend_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "timers.db"))
    store.close()
    with pytest.raises(BackendUnavailable, match=r"timers\.db"):
        store.ping()

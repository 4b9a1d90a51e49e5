"""What only SqliteStore does: its files are private, its lease renewal uses its index, a closed one says so.

The SQLite store holds webhook URLs and payloads: made ``0600`` (with ``-wal``/``-shm``) in folders made
``0700``; what exists already keeps the mode its owner gave it (``doctor`` pointing out a store file
others can read is in ``test_cli_doctor.py``). The file tests fix the umask to the usual 022, under which
SQLite alone would create a world-readable file. The contract every store keeps is in ``test_store_contract.py``.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from tests.fixtures_cli import Cli
from timerctl.model import BackendUnavailable
from timerctl.stores.sqlite import _RENEW, SqliteStore


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


def test_sqlite_renew_is_served_by_the_lease_owner_index(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "timers.db"))
    with sqlite3.connect(store.path) as db:
        plan = db.execute(f"EXPLAIN QUERY PLAN {_RENEW}", (0, "r1")).fetchall()
    store.close()
    assert [row[-1] for row in plan] == ["SEARCH timers USING INDEX timers_owner (lease_owner=?)"]


def test_sqlite_ping_on_a_closed_store_is_backend_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "timers.db"))
    store.close()
    with pytest.raises(BackendUnavailable, match=r"timers\.db"):
        store.ping()

"""Shared fixtures. The API, CLI, daemon, HTTP, Kafka and Redis fixtures live in their own modules, loaded here
as plugins; plain helpers (``make_timer``, ``settings_for``, ``process_env``, ``timerctl``) in ``tests/factories.py``.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from timerctl.stores.sqlite import SqliteStore

# Modules other fixture modules import come first, so pytest rewrites their asserts before the import.
pytest_plugins = [
    "tests.fixtures_http",
    "tests.fixtures_daemons",
    "tests.fixtures_api",
    "tests.fixtures_cli",
    "tests.fixtures_kafka",
    "tests.fixtures_redis",
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    """The test's own connection to ``tmp_path/timers.db``, the store file its runners, daemons and commands use.

    The store contract suite overrides it with a ``store`` of every backend (``tests/fixtures_stores.py``).
    """
    db = SqliteStore(str(tmp_path / "timers.db"))
    yield db
    db.close()


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask 022, under which SQLite alone would create a world-readable store file."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def berlin() -> ZoneInfo:
    """Europe/Berlin, a zone with daylight saving time; skips where the machine has no tz database entry for it."""
    try:
        return ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:
        pytest.skip("no tz database entry for Europe/Berlin on this machine (installing tzdata is not allowed)")

"""A corrupt row in the SQLite file: the runner fails it and goes on; ``get``/``list``/``stats`` show it as Failed.

The contract suite (``tests/test_store_contract.py``) pins the store behaviour on every backend; here the
same corruption meets the real entry points: a ``timerctl serve runner`` process and the CLI commands.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.fixtures_http import Receiver, wait_until
from timerctl.cli import app
from timerctl.model import Status, Timer
from timerctl.stores.rows import CORRUPT, decode_row
from timerctl.stores.sqlite import SqliteStore, _row, _stored_instant, to_ms

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def timer(timer_id: str, url: str, due: datetime) -> Timer:
    return Timer(timer_id, url, due, due - timedelta(minutes=1), payload={"n": timer_id})


def corrupt(db: Path, timer_id: str, column: str, value: object) -> None:
    """What a hand edit or another tool could leave: a value timerctl itself never writes."""
    with sqlite3.connect(db, isolation_level=None) as conn:
        assert conn.execute(f"UPDATE timers SET {column} = ? WHERE timer_id = ?", (value, timer_id)).rowcount == 1


def status_column(db: Path, timer_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT status, last_error FROM timers WHERE timer_id = ?", (timer_id,)).fetchone()
    return row[0], row[1]


@pytest.fixture
def runner_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMERCTL_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), TIMERCTL_DB=str(tmp_path / "timers.db"))
    env.update(TIMERCTL_POLL_INTERVAL="0.1", TIMERCTL_LEASE="5s")
    return env


@pytest.fixture
def runner(tmp_path: Path, runner_env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_runner_fails_a_corrupt_row_keeps_running_and_fires_the_good_timer(
    tmp_path: Path, receiver: Receiver, runner_env: dict[str, str], runner: list[subprocess.Popen[bytes]]
) -> None:
    """Before the fix the runner died at start on the corrupt row (a crash loop under Restart=on-failure)."""
    db = tmp_path / "timers.db"
    now = datetime.now(UTC)
    store = SqliteStore(str(db))
    # Both overdue, the corrupt one first: it is in the very first claim, ahead of the good one.
    store.insert_many(
        [
            timer("bad", receiver.url("/bad"), now - timedelta(seconds=2)),
            timer("good", receiver.url("/good"), now - timedelta(seconds=1)),
        ]
    )
    store.close()
    corrupt(db, "bad", "payload", "{this is not json")
    log = tmp_path / "runner.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "timerctl", "serve", "runner", "--log-format", "json"],
            cwd=ROOT,  # this tree's timerctl
            env=runner_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    runner.append(proc)

    (got,) = receiver.wait_for(1, timeout=15, path="/good")
    assert got.json["timerId"] == "good"
    _, error = wait_until(lambda: (s := status_column(db, "bad"))[0] == "Failed" and s, message="bad Failed")
    assert error is not None and error.startswith("stored timer is corrupt: payload is not valid JSON")
    wait_until(lambda: status_column(db, "good")[0] == "Finished", message="good Finished")
    assert proc.poll() is None, log.read_text()
    assert receiver.requests == [got]
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("bad" in e["message"] and "marked Failed" in e["message"] for e in events), events


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    db = tmp_path / "timers.db"
    monkeypatch.setenv("TIMERCTL_DB", str(db))
    store = SqliteStore(str(db))
    store.insert_many(
        [timer("good", "https://hooks.example.com/g", T0), timer("bad", "https://hooks.example.com/b", T0)]
    )
    store.close()
    return db


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("payload", "{nope", "payload is not valid JSON"),
        ("status", "Exploded", "status 'Exploded' is not one of Scheduled, Running, Finished, Failed, Cancelled"),
        ("created_ms", "yesterday", "createdAt 'yesterday' is not an instant"),
    ],
)
def test_get_list_and_stats_show_a_corrupt_timer_as_failed(cli_db: Path, column: str, value: str, why: str) -> None:
    corrupt(cli_db, "bad", column, value)
    cli = CliRunner()

    got = cli.invoke(app, ["get", "bad", "--json"])
    assert got.exit_code == 0, got.output
    shown = json.loads(got.stdout)
    assert shown["timerStatus"] == "Failed"
    assert shown["lastError"].startswith("stored timer is corrupt: ") and why in shown["lastError"]

    listed = cli.invoke(app, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {t["timerId"]: t["timerStatus"] for t in json.loads(listed.stdout)} == {"good": "Scheduled", "bad": "Failed"}
    assert cli.invoke(app, ["list"]).exit_code == 0  # the people's table too

    stats = cli.invoke(app, ["stats", "--json"])
    assert stats.exit_code == 0, stats.output
    counts = json.loads(stats.stdout)["counts"]
    assert sum(counts.values()) == 2
    if column == "status":
        assert counts["Failed"] == 1  # a status no timer has counts as Failed, as it reads
    assert cli.invoke(app, ["get", "bad"]).exit_code == 0


# --- the decoder itself ----------------------------------------------------------------------------------

GOOD_ROW = ("t", "https://h.example/x", to_ms(T0), to_ms(T0), "Running", '{"a":1}', 2, None, "e", to_ms(T0), "r", None)
junk = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.sampled_from(["Scheduled", "Running", "{", "[1]", "null"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 11), junk), max_size=4))
def test_decode_row_never_raises_and_says_why_whenever_it_fails_a_row(changes: list[tuple[int, object]]) -> None:
    row = list(GOOD_ROW)
    for index, value in changes:
        row[index] = value
    timer, corruption = decode_row(row, _stored_instant)
    if corruption is None:  # then every value was taken as stored (a payload "null" is no payload)
        stored = _row(timer)
        assert [stored[i] for i in range(12) if i != 5] == [row[i] for i in range(12) if i != 5]
    else:
        assert timer.status is Status.FAILED and timer.last_error == CORRUPT + corruption
        assert "\n" not in corruption and len(timer.last_error) <= 600
        assert (timer.lease_owner, timer.lease_until) == (None, None)


def test_decode_row_of_a_good_row_is_its_timer() -> None:
    timer, corruption = decode_row(GOOD_ROW, _stored_instant)
    assert corruption is None
    assert timer == Timer("t", "https://h.example/x", T0, T0, Status.RUNNING, {"a": 1}, 2, None, "e", T0, "r", None)

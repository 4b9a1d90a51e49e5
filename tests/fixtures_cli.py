"""The ``timerctl`` command line in-process, through ``timerctl.cli.main``, on the test's own SQLite file.

The ``cli`` fixture clears every ``TIMERCTL_*`` variable and points the config folder into ``tmp_path``, so
the machine's own settings are never read; ``TIMERCTL_DB`` is ``tmp_path/timers.db``. ``attempt``,
``attempts``, ``running`` and ``plant`` put timers in a runner's states through the store, as a runner would.
"""

from __future__ import annotations

import io
import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.factories import PUBLIC_KEYS, make_timer, stored_timers
from timerctl.attempts import Delivery, Outcome
from timerctl.cli import main
from timerctl.model import Status, Timer
from timerctl.stores.base import Store


class Result(NamedTuple):
    """What a command did: exit code, stdout, stderr (unpacks as ``code, out, err``)."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``timerctl`` in-process and reads what it stored."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.db = db

    def __call__(self, *args: str, stdin: bytes | None = None) -> Result:
        """``timerctl ARGS`` with ``stdin`` as its standard input: the exit code, stdout and stderr."""
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(list(args))
        captured = self.capsys.readouterr()
        code = info.value.code
        assert isinstance(code, int), f"exit code {code!r} is not an int"
        return Result(code, captured.out, captured.err)

    def ok_json(self, *args: str) -> Any:
        """The JSON of ``timerctl ARGS --json``, which must exit 0 with one line and nothing on stderr."""
        result = self(*args, "--json")
        assert (result.code, result.err) == (0, ""), result
        assert result.out.endswith("\n") and result.out.count("\n") == 1, result.out
        return result.json

    def stored(self) -> list[Timer]:
        return stored_timers(self.db)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    db = tmp_path / "timers.db"
    monkeypatch.setenv("TIMERCTL_DB", str(db))
    return Cli(capsys, monkeypatch, db)


@pytest.fixture
def default_store(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The store commands use when no TIMERCTL_DB is set: the default, under ``XDG_DATA_HOME=tmp_path/data``."""
    monkeypatch.delenv("TIMERCTL_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "timerctl" / "timers.db"


@pytest.fixture
def wide_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run from ``tmp_path`` (relative ``@file`` payloads) on a terminal wide enough that rich
    tables never fold ids and URLs in the assertions."""
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)


def assert_rejected(result: Result, code: int, fragment: str) -> None:
    """Exit ``code``, nothing on stdout, and exactly one ``error:`` line on stderr holding ``fragment``."""
    assert result.code == code, result
    assert result.out == "", result
    lines = result.err.splitlines()
    assert len(lines) == 1 and result.err.endswith("\n"), result.err
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]


#: Every field of a timer's JSON form: ``PUBLIC_KEYS`` and the fields of a timer's whole life.
TIMER_KEYS = {*PUBLIC_KEYS, "nextAttemptAt", "endedAt", "deliveryCount", "onFailureUrl"}
#: ``get --json``: the timer's fields and its deliveries.
DETAIL_KEYS = {*TIMER_KEYS, "deliveries", "deliveriesOmitted"}
RUNNER = "test-runner"
HOUR = timedelta(hours=1)


def attempt(
    store: Store,
    timer_id: str,
    status: Status,
    at: datetime,
    *,
    code: int | None = None,
    error: str | None = None,
    response: str | None = None,
    retry_at: datetime | None = None,
) -> Timer:
    """Record one attempt of ``timer_id`` at ``at`` the way a runner does (claim, start, complete), ending
    ``status`` (Retrying: due again at ``retry_at``, Finished or Failed), its Delivery kept; the timer after it."""
    [timer] = attempts(store, [timer_id], status, at, code=code, error=error, response=response, retry_at=retry_at)
    return timer


def attempts(
    store: Store,
    timer_ids: list[str],
    status: Status,
    at: datetime,
    *,
    code: int | None = None,
    error: str | None = None,
    response: str | None = None,
    retry_at: datetime | None = None,
) -> list[Timer]:
    """``attempt`` for many timers in one claim, one start and one complete."""
    timers = {t.timer_id: t for tid in timer_ids if (t := store.get(tid)) is not None}
    assert list(timers) == timer_ids, f"not all stored: {timer_ids}"
    due = max(t.due_at for t in timers.values())
    claimed = store.claim_due(RUNNER, at, due, at + timedelta(minutes=5), len(timer_ids) + 1000)
    mine = [t for t in claimed if t.timer_id in timers]
    store.release(RUNNER, [t.timer_id for t in claimed if t.timer_id not in timers])
    assert sorted(store.start(RUNNER, mine)) == sorted(timer_ids)
    if error is None and code is not None and not 200 <= code < 300:
        error = f"HTTP {code}"
    outcomes = []
    for timer in timers.values():
        number = timer.attempts + 1
        delivery = Delivery(number, at, 25, code, error, response)
        ended = None if status is Status.RETRYING else at
        fired = at if status is Status.FINISHED else None
        outcomes.append(
            Outcome(
                timer.timer_id,
                status,
                number,
                fired_at=fired,
                last_error=error,
                due_at=retry_at,
                ended_at=ended,
                delivery=delivery,
                on_failure_url=timer.on_failure_url,
            )
        )
    assert sorted(store.complete(RUNNER, outcomes)) == sorted(timer_ids)
    done = [store.get(tid) for tid in timer_ids]
    assert all(t is not None and t.status is status for t in done), done
    return [t for t in done if t is not None]


def running(store: Store, timer_id: str, at: datetime) -> Timer:
    """``timer_id`` Running: claimed and started by a runner at ``at`` (its POST committed to)."""
    timer = store.get(timer_id)
    assert timer is not None
    claimed = store.claim_due(RUNNER, at, timer.due_at, at + timedelta(minutes=5), 1000)
    store.release(RUNNER, [t.timer_id for t in claimed if t.timer_id != timer_id])
    assert store.start(RUNNER, [t for t in claimed if t.timer_id == timer_id]) == [timer_id]
    started = store.get(timer_id)
    assert started is not None and started.status is Status.RUNNING
    return started


def plant(
    store: Store, status: Status, timer_id: str, at: datetime, *, url: str | None = None, retry_in: timedelta = HOUR
) -> Timer:
    """A timer in ``status`` as a runner (or a cancel) leaves it, expiring at ``at``: Running since ``at``;
    Retrying after a 503 at ``at``, due again ``retry_in`` later; Finished (200) or Failed (500) at ``at``;
    Cancelled at ``at``."""
    store.insert(make_timer(timer_id, at, url=url, created_at=at - HOUR))
    if status is Status.CANCELLED:
        store.cancel(timer_id, at)
    elif status is Status.RUNNING:
        running(store, timer_id, at)
    elif status is Status.RETRYING:
        attempt(store, timer_id, status, at, code=503, retry_at=at + retry_in)
    elif status is not Status.SCHEDULED:
        attempt(store, timer_id, status, at, code=200 if status is Status.FINISHED else 500)
    timer = store.get(timer_id)
    assert timer is not None and timer.status is status
    return timer

"""Live views (``cli/views.py``): ``watch`` follows a timer to its outcome; ``stats`` and ``list --due-within``.

Each command runs as a process, next to ``timerctl serve runner`` processes where a timer must fire; timers in
a runner's states are planted through the store (``tests/fixtures_cli.attempt``). The countdown's wording per
status is checked on its own, rendered to text.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from tests.factories import make_timer, now, process_env, timerctl
from tests.fixtures_cli import attempt, running
from tests.fixtures_daemons import RunnerProcess
from tests.fixtures_http import Receiver
from timerctl.cli import views
from timerctl.model import Status
from timerctl.stores.sqlite import SqliteStore


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return process_env(tmp_path, poll_interval="0.1", retry_first_delay="0.1")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return timerctl(env, *args, timeout=60)


def create(env: dict[str, str], *args: str) -> str:
    result = cli(env, "create", *args, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["timerId"])


def test_watch_exits_0_with_the_finished_timer(
    env: dict[str, str], receiver: Receiver, spawn: Callable[..., RunnerProcess]
) -> None:
    spawn(env, level="WARNING")
    timer_id = create(env, "--url", receiver.url(), "--in", "1s")
    watched = cli(env, "watch", timer_id, "--json")
    assert watched.returncode == 0, watched.stderr
    final = json.loads(watched.stdout)
    assert final["timerStatus"] == "Finished" and final["firedAt"] is not None
    assert len(receiver.requests) == 1


def test_watch_exits_5_when_the_timer_fails(
    env: dict[str, str], receiver: Receiver, spawn: Callable[..., RunnerProcess]
) -> None:
    env["TIMERCTL_MAX_ATTEMPTS"] = "2"
    receiver.respond("/bad", 500, 500)
    timer_id = create(env, "--url", receiver.url("/bad"), "--in", "0s")
    spawn(env, level="WARNING")
    watched = cli(env, "watch", timer_id, "--json")
    assert watched.returncode == 5
    assert json.loads(watched.stdout)["lastError"] == "HTTP 500"


def test_watch_exits_6_for_a_cancelled_timer_and_shows_people_a_table(env: dict[str, str]) -> None:
    timer_id = create(env, "--url", "http://127.0.0.1:9/x", "--in", "1h")
    assert cli(env, "cancel", timer_id).returncode == 0
    watched = cli(env, "watch", timer_id)
    assert watched.returncode == 6
    assert "Cancelled" in watched.stdout and timer_id in watched.stdout


def test_watch_unknown_id_exits_1(env: dict[str, str]) -> None:
    watched = cli(env, "watch", "nope")
    assert watched.returncode == 1 and watched.stderr.strip() == "error: timer nope not found"


def test_stats_counts_by_status_and_lists_the_next_due(env: dict[str, str]) -> None:
    later = create(env, "--url", "http://127.0.0.1:9/x", "--in", "2h")
    soon = create(env, "--url", "http://127.0.0.1:9/x", "--in", "1h")
    gone = create(env, "--url", "http://127.0.0.1:9/x", "--in", "3h")
    cli(env, "cancel", gone)
    result = cli(env, "stats", "--json", "--next", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["counts"] == {"Scheduled": 2, "Running": 0, "Retrying": 0, "Finished": 0, "Failed": 0, "Cancelled": 1}
    assert [t["timerId"] for t in data["next"]] == [soon]
    human = cli({**env, "COLUMNS": "200"}, "stats", "--next", "1")
    assert "Scheduled" in human.stdout and "1 timer(s)" in human.stdout
    assert soon in human.stdout and later not in human.stdout


def test_list_due_within_filters_and_sorts_by_expiry(env: dict[str, str]) -> None:
    far = create(env, "--url", "http://127.0.0.1:9/x", "--in", "1h")
    second = create(env, "--url", "http://127.0.0.1:9/x", "--in", "5m")
    first = create(env, "--url", "http://127.0.0.1:9/x", "--in", "1m")
    result = cli(env, "list", "--due-within", "10m", "--json")
    assert [t["timerId"] for t in json.loads(result.stdout)] == [first, second]
    assert far not in result.stdout


def test_stats_counts_retrying_timers_and_lists_them_by_their_next_attempt(
    env: dict[str, str], store: SqliteStore
) -> None:
    at = now() - timedelta(seconds=10)
    store.insert_many([make_timer(t, at, url="http://127.0.0.1:9/x") for t in ("retry-soon", "held", "done")])
    attempt(store, "retry-soon", Status.RETRYING, at, code=503, retry_at=now() + timedelta(minutes=5))
    running(store, "held", at)
    attempt(store, "done", Status.FINISHED, at, code=200)
    later = create(env, "--url", "http://127.0.0.1:9/x", "--in", "1h")
    result = cli(env, "stats", "--json", "--next", "5")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["counts"] == {"Scheduled": 1, "Running": 1, "Retrying": 1, "Finished": 1, "Failed": 0, "Cancelled": 0}
    assert [(t["timerId"], t["timerStatus"]) for t in data["next"]] == [
        ("retry-soon", "Retrying"),
        (later, "Scheduled"),
    ]
    human = cli({**env, "COLUMNS": "200"}, "stats")
    assert "Retrying" in human.stdout and "retry-soon" in human.stdout and "held" not in human.stdout


def rendered(timer_status: Status, **fields: object) -> str:
    due = now() + timedelta(minutes=2, seconds=30)
    timer = make_timer("w", due, status=timer_status, **fields)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(views._countdown(timer))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_the_countdown_says_what_the_timer_waits_for() -> None:
    scheduled = rendered(Status.SCHEDULED)
    assert "fires in" in scheduled and "2m30s" in scheduled  # 150 s less a few microseconds, rounded up
    retrying = rendered(Status.RETRYING, attempts=2, last_error="HTTP 503 [see log]")
    assert "next attempt in" in retrying and "HTTP 503 [see log]" in retrying and "fires in" not in retrying
    held = rendered(Status.RUNNING, attempts=1)
    assert "POST" in held and "in flight" in held and "fires in" not in held

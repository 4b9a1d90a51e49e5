"""A timer's life after ``create`` on the command line (``cli/timers.py``): ``update``, ``fire``, ``retry`` (one, and
in bulk), ``purge``, ``create --on-failure``, what ``get`` shows of its deliveries and what ``list`` filters.

In-process through ``timerctl.cli.main`` on the test's SQLite file (``tests/fixtures_cli.py``). The commands read
the real clock, so timers are planted relative to it; a runner's part (claim, start, an attempt's outcome) is
written through the store as a runner writes it (``attempt``, ``running``). Each rejected input must give its
exit code, exactly one ``error:`` line on stderr, nothing on stdout, and leave the timer as it was.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.factories import TIMERCTL, json_string_of_bytes, make_timer, now, process_env
from tests.fixtures_cli import DETAIL_KEYS, TIMER_KEYS, Cli, assert_rejected, attempt, attempts
from tests.fixtures_cli import plant as planted
from timerctl.attempts import MAX_DELIVERIES_KEPT
from timerctl.model import MAX_PAYLOAD_BYTES, Status, Timer, format_instant
from timerctl.stores.sqlite import SqliteStore

URL = "https://hooks.example.com/fire"
OTHER = "https://hooks.example.com/other"
CALLBACK = "https://hooks.example.com/failed"
API = "https://api.example.com/"
MS = timedelta(milliseconds=1)

pytestmark = pytest.mark.usefixtures("wide_terminal")


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def created(cli: Cli, timer_id: str, *args: str) -> dict[str, object]:
    """A timer made by ``create --id timer_id`` (due in an hour unless ``args`` say), as its JSON."""
    when = [] if {"--in", "--at"} & set(args) else ["--in", "1h"]
    data = cli.ok_json("create", "--url", URL, "--id", timer_id, *when, *args)
    assert isinstance(data, dict)
    return data


def stored(store: SqliteStore, timer_id: str) -> Timer:
    timer = store.get(timer_id)
    assert timer is not None
    return timer


def plant(
    store: SqliteStore, status: Status, timer_id: str = "t-1", url: str = URL, ago: timedelta = timedelta(0)
) -> Timer:
    """A timer in ``status`` (``tests/fixtures_cli.plant``) whose instant, and end, was ``ago`` before now."""
    return planted(store, status, timer_id, now() - ago, url=url, retry_in=ago + timedelta(hours=1))


# --- update ----------------------------------------------------------------------------------------------


def test_update_changes_time_url_and_payload_in_place(cli: Cli, store: SqliteStore) -> None:
    before = created(cli, "u-1", "--payload", '{"v": 1}')
    start = now()
    after = cli.ok_json("update", "u-1", "--in", "2h", "--url", OTHER, "--payload", '{"v": 2}')
    assert set(after) == TIMER_KEYS
    assert (after["timerId"], after["createdAt"], after["timerStatus"]) == ("u-1", before["createdAt"], "Scheduled")
    assert (after["webhookUrl"], after["payload"]) == (OTHER, {"v": 2})
    assert timedelta(hours=2) - MS <= instant(after["expiryTime"]) - start <= timedelta(hours=2, seconds=5)
    assert after["nextAttemptAt"] == after["expiryTime"] and 7195 <= after["timeLeft"] <= 7200
    timer = stored(store, "u-1")
    assert (timer.webhook_url, timer.payload, timer.revision) == (OTHER, {"v": 2}, 1)
    assert timer.due_at == timer.expiry_time == instant(after["expiryTime"])


@pytest.mark.parametrize(
    ("args", "seconds"),
    [
        pytest.param(["--in", "90m"], 5400, id="in"),
        pytest.param(["--hours", "1", "--minutes", "30"], 5400, id="hms"),
        pytest.param(["--minutes", "1", "--seconds", "1"], 61, id="hms-minutes"),
        pytest.param(["--in", "0s"], 0, id="now"),
    ],
)
def test_update_to_a_delay_counts_from_now(cli: Cli, args: list[str], seconds: int) -> None:
    created(cli, "u-2", "--in", "10d")
    start = now()
    after = cli.ok_json("update", "u-2", *args)
    due = instant(after["expiryTime"]) - start
    assert timedelta(seconds=seconds) - MS <= due <= timedelta(seconds=seconds + 5)
    assert after["timeLeft"] == pytest.approx(seconds, abs=5)


def test_update_at_an_instant_and_nothing_else(cli: Cli, store: SqliteStore) -> None:
    created(cli, "u-3", "--payload", "[1]")
    target = (now() + timedelta(hours=3)).replace(microsecond=123_000)
    after = cli.ok_json("update", "u-3", "--at", iso(target))
    assert instant(after["expiryTime"]) == target
    assert (after["webhookUrl"], after["payload"]) == (URL, [1])  # what was not given is kept


def test_update_payload_from_a_file_or_none_and_the_failure_callback(cli: Cli, tmp_path: Path) -> None:
    created(cli, "u-4", "--payload", '{"v": 1}')
    (tmp_path / "body.json").write_text('{\n  "from": "file"\n}\n', encoding="utf-8")
    assert cli.ok_json("update", "u-4", "--payload", "@body.json")["payload"] == {"from": "file"}
    assert cli.ok_json("update", "u-4", "--payload", "null")["payload"] is None
    assert cli.ok_json("update", "u-4", "--on-failure", CALLBACK)["onFailureUrl"] == CALLBACK
    after = cli.ok_json("update", "u-4", "--on-failure", "")
    assert after["onFailureUrl"] is None and after["webhookUrl"] == URL


def test_update_to_the_same_values_changes_nothing(cli: Cli, store: SqliteStore) -> None:
    created(cli, "u-5", "--payload", '{"v": 1}')
    cli.ok_json("update", "u-5", "--url", URL, "--payload", '{"v": 1}')
    assert stored(store, "u-5").revision == 0


def test_update_of_a_retrying_timer_keeps_it_retrying_due_at_the_new_instant(cli: Cli, store: SqliteStore) -> None:
    plant(store, Status.RETRYING, "r-1")
    after = cli.ok_json("update", "r-1", "--in", "10m")
    assert after["timerStatus"] == "Retrying" and after["nextAttemptAt"] == after["expiryTime"]
    assert 595 <= after["timeLeft"] <= 600
    timer = stored(store, "r-1")
    assert (timer.status, timer.attempts, timer.due_at) == (Status.RETRYING, 1, instant(after["expiryTime"]))


def test_update_for_people_prints_the_timer(cli: Cli) -> None:
    created(cli, "u-6")
    result = cli("update", "u-6", "--url", OTHER)
    assert (result.code, result.err) == (0, "")
    assert "u-6" in result.out and OTHER in result.out and "Scheduled" in result.out


#: Inputs refused by ``update`` as by ``create``: a time form, a URL or a payload.
REFUSED_ALIKE = [
    pytest.param(["--in=-5s"], "negative", id="negative-in"),
    pytest.param(["--in", "soon"], "invalid duration", id="garbage-in"),
    pytest.param(["--in", "5m1h"], "largest first", id="misordered-units"),
    pytest.param(["--in", "366d"], "beyond the horizon", id="beyond-horizon"),
    pytest.param(["--at", "2000-01-01T00:00:00Z"], "in the past", id="at-in-past"),
    pytest.param(["--at", "tomorrow"], "invalid time", id="garbage-at"),
    pytest.param(["--at", "9000-01-01T00:00:00Z"], "beyond the horizon", id="at-past-horizon"),
    pytest.param(["--hours", "x"], "--hours must be an integer, got 'x'", id="non-integer-hours"),
    pytest.param(["--minutes", "60"], "minutes must be 0-59, got 60", id="minutes-60"),
    pytest.param(["--hours=-1"], "hours must be 0 or more", id="negative-hours"),
    pytest.param(["--url", "ftp://example.com/x"], "http:// or https://", id="ftp-url"),
    pytest.param(["--url", "http://user:pw@example.com/"], "credentials", id="url-with-password"),
    pytest.param(["--url", "http://example.com/a\nb"], "control characters", id="url-lf"),
    pytest.param(["--payload", "{"], "not valid JSON", id="invalid-json"),
    pytest.param(["--payload", json_string_of_bytes(MAX_PAYLOAD_BYTES + 1)], "over 65536 bytes", id="payload-64KiB+1"),
    pytest.param(["--payload", "@missing.json"], "cannot read payload file", id="no-payload-file"),
    pytest.param(["--on-failure", "ftp://example.com/x"], "http:// or https://", id="ftp-callback"),
]


@pytest.mark.parametrize(("args", "fragment"), REFUSED_ALIKE)
def test_update_refuses_what_create_refuses_with_the_same_message(
    cli: Cli, store: SqliteStore, args: list[str], fragment: str
) -> None:
    created(cli, "same")
    before = stored(store, "same")
    result = cli("update", "same", *args, "--json")
    assert_rejected(result, 2, fragment)
    assert stored(store, "same") == before
    as_create = [*args]
    if "--url" not in args:
        as_create += ["--url", URL]
    if not {"--in", "--at", "--hours", "--minutes", "--seconds"} & {a.split("=")[0] for a in args}:
        as_create += ["--in", "1h"]
    assert cli("create", *as_create, "--json").err == result.err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param([], "nothing to change; give a new time", id="nothing"),
        pytest.param(["--in", "1h", "--at", "2030-01-01T00:00:00Z"], "give at most one of --in", id="in-and-at"),
        pytest.param(["--in", "1h", "--seconds", "5"], "give at most one of --in", id="in-and-hms"),
        pytest.param(["--bogus"], "No such option: --bogus", id="unknown-option"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_update_rejects(cli: Cli, store: SqliteStore, args: list[str], fragment: str, as_json: bool) -> None:
    created(cli, "u-7")
    before = stored(store, "u-7")
    assert_rejected(cli("update", "u-7", *args, *(["--json"] if as_json else [])), 2, fragment)
    assert stored(store, "u-7") == before


@pytest.mark.parametrize("command", [["update", "nope", "--in", "1h"], ["fire", "nope"], ["retry", "nope"]])
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_changes_of_an_unknown_timer_exit_1(cli: Cli, command: list[str], as_json: bool) -> None:
    result = cli(*command, *(["--json"] if as_json else []))
    assert (result.code, result.out, result.err) == (1, "", "error: timer nope not found\n")


ENDED_OR_RUNNING = [Status.RUNNING, Status.FINISHED, Status.FAILED, Status.CANCELLED]


def refusal(status: Status, action: str) -> str:
    why = "its POST has already started" if status is Status.RUNNING else f"it is {status.value}"
    return f"timer w-1 cannot be {action}: {why}; only a Scheduled or Retrying timer can"


@pytest.mark.parametrize("status", [pytest.param(s, id=s.value) for s in ENDED_OR_RUNNING])
@pytest.mark.parametrize(
    ("command", "action"),
    [(["update", "w-1", "--in", "1h"], "updated"), (["fire", "w-1"], "fired now"), (["cancel", "w-1"], "cancelled")],
    ids=["update", "fire", "cancel"],
)
def test_changes_of_a_running_or_ended_timer_exit_4_naming_why(
    cli: Cli, store: SqliteStore, status: Status, command: list[str], action: str
) -> None:
    before = plant(store, status, "w-1")
    assert_rejected(cli(*command, "--json"), 4, refusal(status, action))
    assert stored(store, "w-1") == before


# --- fire -------------------------------------------------------------------------------------------------


def test_fire_makes_a_scheduled_timer_due_now_keeping_its_expiry(cli: Cli, store: SqliteStore) -> None:
    before = created(cli, "f-1", "--in", "1d")
    after = cli.ok_json("fire", "f-1")
    assert set(after) == TIMER_KEYS
    assert (after["timerStatus"], after["timeLeft"], after["expiryTime"]) == ("Scheduled", 0, before["expiryTime"])
    assert instant(after["nextAttemptAt"]) <= now()
    assert stored(store, "f-1").due_at == instant(after["nextAttemptAt"])
    again = cli.ok_json("fire", "f-1")  # already due: nothing to change
    assert again["nextAttemptAt"] == after["nextAttemptAt"] and stored(store, "f-1").revision == 1


def test_fire_brings_a_retrying_timer_s_next_attempt_forward(cli: Cli, store: SqliteStore) -> None:
    plant(store, Status.RETRYING, "f-2")
    result = cli("fire", "f-2")
    assert (result.code, result.err) == (0, "")
    assert "Retrying" in result.out and "f-2" in result.out
    timer = stored(store, "f-2")
    assert timer.status is Status.RETRYING and timer.due_at <= now()


# --- retry one --------------------------------------------------------------------------------------------


def failed_twice(store: SqliteStore, timer_id: str, ago: timedelta = timedelta(minutes=5), url: str = URL) -> Timer:
    """A timer whose two attempts (503, then 500) ``ago`` failed it."""
    at = now() - ago
    store.insert(make_timer(timer_id, at - timedelta(seconds=1), url=url, created_at=at - timedelta(hours=1)))
    attempt(store, timer_id, Status.RETRYING, at - timedelta(seconds=1), code=503, retry_at=at)
    return attempt(store, timer_id, Status.FAILED, at, code=500, response="down")


def test_retry_schedules_a_failed_timer_again_with_its_history(cli: Cli, store: SqliteStore) -> None:
    failed_twice(store, "x-1")
    after = cli.ok_json("retry", "x-1")
    assert set(after) == TIMER_KEYS
    assert (after["timerStatus"], after["attempts"], after["deliveryCount"]) == ("Scheduled", 0, 2)
    assert (after["endedAt"], after["firedAt"], after["timeLeft"]) == (None, None, 0)
    assert instant(after["nextAttemptAt"]) <= now()
    detail = cli.ok_json("get", "x-1")
    assert [d["statusCode"] for d in detail["deliveries"]] == [503, 500]


@pytest.mark.parametrize(
    ("args", "seconds"),
    [pytest.param(["--in", "10m"], 600, id="in"), pytest.param(["--in", "0s"], 0, id="in-0s")],
)
def test_retry_later(cli: Cli, store: SqliteStore, args: list[str], seconds: int) -> None:
    failed_twice(store, "x-2")
    after = cli.ok_json("retry", "x-2", *args)
    assert after["timeLeft"] == pytest.approx(seconds, abs=5)


def test_retry_at_an_instant(cli: Cli, store: SqliteStore) -> None:
    failed_twice(store, "x-3")
    target = (now() + timedelta(hours=2)).replace(microsecond=0)
    after = cli.ok_json("retry", "x-3", "--at", iso(target))
    assert instant(after["nextAttemptAt"]) == target and instant(after["expiryTime"]) < now()


@pytest.mark.parametrize("status", [pytest.param(s, id=s.value) for s in Status if s is not Status.FAILED])
def test_retry_of_a_timer_that_is_not_failed_exits_4(cli: Cli, store: SqliteStore, status: Status) -> None:
    before = plant(store, status, "w-1")
    message = f"timer w-1 cannot be retried: it is {status.value}; only a Failed timer can"
    assert_rejected(cli("retry", "w-1"), 4, message)
    assert stored(store, "w-1") == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param([], "give either a timer ID or --status Failed", id="neither"),
        pytest.param(["x-4", "--status", "Failed"], "give either a timer ID or --status Failed", id="both"),
        pytest.param(["x-4", "--since", "1h"], "--since and --url-prefix select timers for --status", id="id-since"),
        pytest.param(["x-4", "--url-prefix", API], "--since and --url-prefix select", id="id-url-prefix"),
        pytest.param(["--status", "Finished"], "only --status Failed is accepted", id="status-finished"),
        pytest.param(["--status", "done"], "unknown status 'done'", id="status-unknown"),
        pytest.param(["--status", "Failed", "--since", "soon"], "invalid duration", id="bad-since"),
        pytest.param(["--status", "Failed", "--since", "900000000d"], "before the year 1", id="since-overflow"),
        pytest.param(["x-4", "--in", "1m", "--at", "2030-01-01T00:00:00Z"], "at most one of --in", id="in-and-at"),
        pytest.param(["x-4", "--in=-1m"], "negative", id="negative-in"),
        pytest.param(["x-4", "--in", "366d"], "beyond the horizon", id="in-beyond-horizon"),
        pytest.param(["x-4", "--at", "2000-01-01T00:00:00Z"], "in the past", id="at-in-past"),
        pytest.param(["x-4", "--at", "soon"], "invalid time", id="garbage-at"),
        pytest.param(["x-4", "y"], "unexpected extra argument", id="two-ids"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_retry_rejects(cli: Cli, store: SqliteStore, args: list[str], fragment: str, as_json: bool) -> None:
    before = failed_twice(store, "x-4")
    assert_rejected(cli("retry", *args, *(["--json"] if as_json else [])), 2, fragment)
    assert stored(store, "x-4") == before


# --- retry in bulk ----------------------------------------------------------------------------------------


@pytest.fixture
def failures(store: SqliteStore) -> SqliteStore:
    """Failed timers: two recent ones to the API, an old one to the API, a recent one elsewhere; and, not
    Failed, a Finished one and a Scheduled one to the API."""
    failed_twice(store, "api-recent-1", timedelta(minutes=10), API + "a")
    failed_twice(store, "api-recent-2", timedelta(minutes=20), API + "b?x=1")
    failed_twice(store, "api-old", timedelta(hours=3), API + "a")
    failed_twice(store, "other-recent", timedelta(minutes=10), OTHER)
    plant(store, Status.FINISHED, "api-finished", url=API + "a", ago=timedelta(minutes=10))
    plant(store, Status.SCHEDULED, "api-scheduled", url=API + "a", ago=-timedelta(hours=1))
    return store


def statuses(store: SqliteStore) -> dict[str, str]:
    return {t.timer_id: t.status.value for t in store.find(limit=10_000)}


def test_bulk_retry_selects_by_since_and_url_prefix(cli: Cli, failures: SqliteStore) -> None:
    first = cli.ok_json("retry", "--status", "Failed", "--since", "1h", "--url-prefix", API)
    assert first == {"retried": ["api-recent-2", "api-recent-1"]}  # soonest expiry first
    assert statuses(failures) == {
        "api-recent-1": "Scheduled",
        "api-recent-2": "Scheduled",
        "api-old": "Failed",
        "other-recent": "Failed",
        "api-finished": "Finished",
        "api-scheduled": "Scheduled",
    }
    assert cli.ok_json("retry", "--status", "failed", "--since", "1h") == {"retried": ["other-recent"]}
    assert cli.ok_json("retry", "--status", "Failed", "--url-prefix", "https://nowhere.example/") == {"retried": []}
    assert cli.ok_json("retry", "--status", "Failed") == {"retried": ["api-old"]}
    assert cli.ok_json("retry", "--status", "Failed") == {"retried": []}
    for timer_id in ("api-recent-1", "api-recent-2", "other-recent", "api-old"):
        timer = stored(failures, timer_id)
        assert (timer.attempts, timer.delivery_count, timer.ended_at) == (0, 2, None)


def test_bulk_retry_due_later_for_people_without_a_bar_off_a_terminal(cli: Cli, failures: SqliteStore) -> None:
    result = cli("retry", "--status", "Failed", "--since", "1h", "--in", "10m")
    assert (result.code, result.err) == (0, "")
    assert result.out.startswith("retried 3 Failed timer(s): Scheduled again, due at ")
    for timer_id in ("api-recent-1", "api-recent-2", "other-recent"):
        left = (stored(failures, timer_id).due_at - now()).total_seconds()
        assert 590 <= left <= 600
    none = cli("retry", "--status", "Failed", "--since", "1h")
    assert (none.code, none.out, none.err) == (0, "no Failed timer matched; none retried\n", "")


def test_bulk_retry_moves_more_than_a_page(cli: Cli, store: SqliteStore) -> None:
    at = now() - timedelta(minutes=1)
    ids = [f"many-{i:04d}" for i in range(1234)]
    store.insert_many([make_timer(i, at, url=URL, created_at=at - timedelta(hours=1)) for i in ids])
    attempts(store, ids, Status.FAILED, at, code=500)
    result = cli.ok_json("retry", "--status", "Failed")
    assert sorted(result["retried"]) == ids
    assert store.counts()[Status.SCHEDULED] == len(ids)


def test_bulk_retry_shows_a_progress_bar_on_a_terminal(tmp_path: Path, failures: SqliteStore) -> None:
    """stderr on a pseudo-terminal, stdout a pipe: the bar is drawn there, and the count alone is printed."""
    controller, terminal = pty.openpty()
    env = {**process_env(tmp_path), "COLUMNS": "120", "TERM": "xterm"}
    with subprocess.Popen(
        [TIMERCTL, "retry", "--status", "Failed"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
    ) as proc:
        os.close(terminal)
        drawn = b""
        while True:  # until the child closes its end of the terminal (EIO), with a bound on each wait
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, "no output on the terminal within 30 s"
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
        out = proc.stdout.read() if proc.stdout else b""
        assert proc.wait(timeout=30) == 0, drawn
    os.close(controller)
    assert out == b"retried 4 Failed timer(s): Scheduled again, due now\n"
    assert b"retrying" in drawn and b"4/?" in drawn.replace(b" ", b"")


# --- purge ------------------------------------------------------------------------------------------------

DAY = timedelta(days=1)


@pytest.fixture
def ended(store: SqliteStore) -> SqliteStore:
    """Timers that ended two days ago (two Finished, one Cancelled, one Failed), one Finished an hour ago,
    and one still Scheduled."""
    plant(store, Status.FINISHED, "fin-old-1", ago=2 * DAY)
    plant(store, Status.FINISHED, "fin-old-2", ago=2 * DAY)
    plant(store, Status.CANCELLED, "can-old", ago=2 * DAY)
    plant(store, Status.FAILED, "fail-old", ago=2 * DAY)
    plant(store, Status.FINISHED, "fin-new", ago=timedelta(hours=1))
    plant(store, Status.SCHEDULED, "pending", ago=-DAY)
    return store


def test_purge_deletes_finished_and_cancelled_by_default_and_counts_first_with_dry_run(
    cli: Cli, ended: SqliteStore
) -> None:
    assert cli.ok_json("purge", "--older-than", "1d", "--dry-run") == {"wouldDelete": 3}
    assert len(statuses(ended)) == 6
    assert cli.ok_json("purge", "--older-than", "1d") == {"deleted": 3}
    assert sorted(statuses(ended)) == ["fail-old", "fin-new", "pending"]
    assert ended.deliveries("fin-old-1") == []  # the history goes with the timer
    assert cli.ok_json("purge", "--older-than", "1d") == {"deleted": 0}


def test_purge_by_status_for_people(cli: Cli, ended: SqliteStore) -> None:
    dry = cli("purge", "--older-than", "30m", "--status", "failed", "--status", "Finished", "--dry-run")
    assert (dry.code, dry.err) == (0, "")
    assert dry.out == "would delete 4 timer(s): Failed or Finished, ended more than 30m ago\n"
    done = cli("purge", "--older-than", "1d", "--status", "Failed")
    assert done.out == "deleted 1 timer(s): Failed, ended more than 1d ago\n"
    assert "fail-old" not in statuses(ended) and "fin-old-1" in statuses(ended)
    assert cli.ok_json("purge", "--older-than", "0s", "--status", "Finished", "--status", "Cancelled") == {"deleted": 4}
    assert statuses(ended) == {"pending": "Scheduled"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param([], "Missing option '--older-than'", id="no-older-than"),
        pytest.param(["--older-than", "soon"], "invalid duration", id="bad-older-than"),
        pytest.param(["--older-than=-1d"], "negative", id="negative-older-than"),
        pytest.param(["--older-than", "1d", "--status", "Scheduled"], "--status Scheduled cannot be purged", id="sch"),
        pytest.param(
            ["--older-than", "1d", "--status", "Retrying"], "--status Retrying cannot be purged", id="retrying"
        ),
        pytest.param(["--older-than", "1d", "--status", "done"], "unknown status 'done'", id="unknown-status"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_purge_rejects(cli: Cli, ended: SqliteStore, args: list[str], fragment: str, as_json: bool) -> None:
    assert_rejected(cli("purge", *args, *(["--json"] if as_json else [])), 2, fragment)
    assert len(statuses(ended)) == 6


# --- deliveries in get ------------------------------------------------------------------------------------


def test_get_json_carries_every_attempt(cli: Cli, store: SqliteStore) -> None:
    start = now() - timedelta(minutes=5)
    store.insert(make_timer("d-1", start, url=URL, created_at=start - timedelta(hours=1)))
    first, second, third = (start + timedelta(seconds=s) for s in (0, 1, 3))
    attempt(store, "d-1", Status.RETRYING, first, code=500, response="oops", retry_at=second)
    attempt(store, "d-1", Status.RETRYING, second, error="timed out after 10s", retry_at=third)
    attempt(store, "d-1", Status.FINISHED, third, code=200, response='{"ok": true}')
    data = cli.ok_json("get", "d-1")
    assert set(data) == DETAIL_KEYS
    assert data["deliveries"] == [
        {
            "attempt": 1,
            "at": format_instant(first),
            "durationMs": 25,
            "statusCode": 500,
            "error": "HTTP 500",
            "response": "oops",
        },
        {
            "attempt": 2,
            "at": format_instant(second),
            "durationMs": 25,
            "statusCode": None,
            "error": "timed out after 10s",
            "response": None,
        },
        {
            "attempt": 3,
            "at": format_instant(third),
            "durationMs": 25,
            "statusCode": 200,
            "error": None,
            "response": '{"ok": true}',
        },
    ]
    assert (data["deliveriesOmitted"], data["deliveryCount"], data["attempts"]) == (0, 3, 3)
    assert (data["timerStatus"], data["endedAt"], data["nextAttemptAt"]) == ("Finished", format_instant(third), None)
    people = cli("get", "d-1")
    assert (people.code, people.err) == (0, "")
    for text in ("3 deliveries", "HTTP 500: oops", "timed out after 10s", '{"ok": true}', "Finished"):
        assert text in people.out


def test_get_keeps_the_last_attempts_and_counts_the_others(cli: Cli, store: SqliteStore) -> None:
    start = now() - timedelta(hours=1)
    store.insert(make_timer("d-2", start, url=URL, created_at=start - timedelta(hours=1)))
    total = MAX_DELIVERIES_KEPT + 5
    for n in range(1, total):
        at = start + timedelta(seconds=n)
        attempt(store, "d-2", Status.RETRYING, at, code=502, retry_at=at + timedelta(seconds=1))
    attempt(store, "d-2", Status.FAILED, start + timedelta(seconds=total), code=500, response="down")
    data = cli.ok_json("get", "d-2")
    assert [d["attempt"] for d in data["deliveries"]] == list(range(6, total + 1))
    assert (data["deliveriesOmitted"], data["deliveryCount"], data["lastError"]) == (5, total, "HTTP 500")
    people = cli("get", "d-2")
    assert f"{MAX_DELIVERIES_KEPT} deliveries (5 earlier not kept)" in people.out
    assert "HTTP 500" in people.out and "HTTP 502" in people.out


def test_get_of_a_timer_never_attempted_has_no_deliveries(cli: Cli) -> None:
    created(cli, "d-3")
    data = cli.ok_json("get", "d-3")
    assert (data["deliveries"], data["deliveriesOmitted"]) == ([], 0)
    assert "deliveries" not in cli("get", "d-3").out


def test_get_shows_text_from_receivers_as_it_is(cli: Cli, store: SqliteStore) -> None:
    at = now() - timedelta(minutes=1)
    store.insert(make_timer("d-4", at, url=URL + "/[bold]x[/bold]", created_at=at - timedelta(hours=1)))
    attempt(store, "d-4", Status.FINISHED, at, code=200, response="[bold]hello[/bold]")
    people = cli("get", "d-4")
    assert "[bold]hello[/bold]" in people.out and URL + "/[bold]x[/bold]" in people.out


# --- the fields of each state, create --on-failure, list filters, cancel while Retrying ----------------------


def test_json_of_each_state_says_what_comes_next(cli: Cli, store: SqliteStore) -> None:
    scheduled = created(cli, "s-1", "--in", "90s")
    assert scheduled["nextAttemptAt"] == scheduled["expiryTime"] and 89 <= scheduled["timeLeft"] <= 90
    plant(store, Status.RETRYING, "s-2")
    retrying = cli.ok_json("get", "s-2")
    assert retrying["timerStatus"] == "Retrying" and retrying["nextAttemptAt"] != retrying["expiryTime"]
    assert 3595 <= retrying["timeLeft"] <= 3600 and retrying["lastError"] == "HTTP 503"
    plant(store, Status.RUNNING, "s-3")
    assert {k: cli.ok_json("get", "s-3")[k] for k in ("timerStatus", "timeLeft", "nextAttemptAt")} == {
        "timerStatus": "Running",
        "timeLeft": 0,
        "nextAttemptAt": None,
    }
    plant(store, Status.FINISHED, "s-4", ago=timedelta(minutes=1))
    finished = cli.ok_json("get", "s-4")
    assert (finished["timeLeft"], finished["nextAttemptAt"]) == (0, None)
    assert finished["endedAt"] == finished["firedAt"] is not None


def test_a_claimed_timer_reads_scheduled(cli: Cli, store: SqliteStore) -> None:
    created(cli, "s-5", "--in", "1s")
    [claimed] = store.claim_due("test-runner", now(), now() + timedelta(seconds=5), now() + timedelta(minutes=1), 10)
    assert claimed.timer_id == "s-5"
    assert cli.ok_json("get", "s-5")["timerStatus"] == "Scheduled"
    assert cli.ok_json("stats")["counts"]["Scheduled"] == 1
    assert cli.ok_json("cancel", "s-5")["timerStatus"] == "Cancelled"


def test_create_with_a_failure_callback(cli: Cli, tmp_path: Path) -> None:
    data = created(cli, "cb-1", "--on-failure", CALLBACK)
    assert data["onFailureUrl"] == CALLBACK
    again = created(cli, "cb-1", "--on-failure", CALLBACK)  # the same spec: the same timer
    assert (again["createdAt"], again["onFailureUrl"]) == (data["createdAt"], CALLBACK)
    result = cli("create", "--url", URL, "--in", "1h", "--id", "cb-1", "--on-failure", OTHER)
    assert_rejected(result, 4, "timer cb-1 already exists with a different spec")
    assert_rejected(cli("create", "--url", URL, "--in", "1h", "--on-failure", "ftp://x/y"), 2, "http:// or https://")
    line = json.dumps({"url": URL, "in": "1h", "id": "cb-2", "onFailureUrl": CALLBACK})
    (tmp_path / "specs.jsonl").write_text(line + "\n", encoding="utf-8")
    imported = cli("create", "--from-file", str(tmp_path / "specs.jsonl"))
    assert imported.code == 0 and json.loads(imported.out)["onFailureUrl"] == CALLBACK
    assert_rejected(
        cli("create", "--from-file", str(tmp_path / "specs.jsonl"), "--on-failure", CALLBACK), 2, "--from-file takes"
    )


def test_list_filters_by_url_prefix_and_end(cli: Cli, failures: SqliteStore) -> None:
    listed = cli.ok_json("list", "--url-prefix", API)
    assert sorted(t["timerId"] for t in listed) == [
        "api-finished",
        "api-old",
        "api-recent-1",
        "api-recent-2",
        "api-scheduled",
    ]
    assert all(set(t) == TIMER_KEYS for t in listed)
    recent = cli.ok_json("list", "--status", "Failed", "--since", "1h")
    assert [t["timerId"] for t in recent] == ["api-recent-2", "api-recent-1", "other-recent"]
    assert [t["timerId"] for t in cli.ok_json("list", "--url-prefix", API + "b?x")] == ["api-recent-2"]
    assert cli.ok_json("list", "--url-prefix", API + "%") == []  # a prefix, not a LIKE pattern


def test_cancel_of_a_retrying_timer(cli: Cli, store: SqliteStore) -> None:
    plant(store, Status.RETRYING, "c-1")
    people = cli("list", "--status", "Retrying")
    assert "c-1" in people.out and "Retrying" in people.out
    data = cli.ok_json("cancel", "c-1")
    assert (data["timerStatus"], data["attempts"], data["nextAttemptAt"]) == ("Cancelled", 1, None)
    assert stored(store, "c-1").ended_at is not None

"""Clock edge cases: instants already past, timers due at the same millisecond, and DST in local time.

Durations are absolute: ``--in 1d`` is 86,400 s of real time, whatever the wall clock does meanwhile.
Naive local times resolve as ``zoneinfo`` does (README, Input rules): fold=0, so a repeated time is
the first of the two and a skipped time moves forward by the gap.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.factories import make_timer, process_env, stored_timers, timerctl
from tests.fixtures_daemons import RunnerProcess
from tests.fixtures_http import Receiver, wait_until
from tests.polling import free_port
from timerctl.model import Status, Timer, format_instant, parse_instant, utc
from timerctl.stores.sqlite import SqliteStore
from timerctl.timeparse import parse_time

BENCH_RECEIVER = Path(__file__).resolve().parents[2] / "bench" / "receiver.py"
URL = "http://127.0.0.1:9/hook"


def stored(tmp_path: Path) -> dict[str, Timer]:
    return {t.timer_id: t for t in stored_timers(tmp_path / "timers.db")}


# --- instants already past ------------------------------------------------------------------------------


def test_from_file_refuses_past_instants_line_by_line_and_creates_the_rest(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    now = datetime.now(UTC)
    lines = [
        {"url": URL, "in": "1h", "id": "future-in"},
        {"url": URL, "at": format_instant(now - timedelta(hours=1)), "id": "past-z"},
        {"url": URL, "at": (now - timedelta(days=2)).replace(tzinfo=None).isoformat(), "id": "past-naive"},
        {"url": URL, "at": format_instant(now + timedelta(hours=2)), "id": "future-at"},
        {"url": URL, "expiryTime": "2000-01-01T00:00:00Z", "id": "past-old-name"},
    ]
    done = timerctl(env, "create", "--from-file", "-", stdin="\n".join(json.dumps(x) for x in lines) + "\n")
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == ["error: 3 line(s) were invalid; the valid ones were created"]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    errors = {r["line"]: r["error"] for r in results if "error" in r}
    assert sorted(errors) == [2, 3, 5]
    assert all("is in the past" in e for e in errors.values()), errors
    assert set(stored(tmp_path)) == {"future-in", "future-at"}


def test_a_zero_delay_line_in_a_file_import_fires_at_once(
    tmp_path: Path, receiver: Receiver, spawn: Callable[..., RunnerProcess]
) -> None:
    env = process_env(tmp_path, poll_interval="0.1")
    runner = spawn(env)
    runner.wait_ready()
    line = json.dumps({"url": receiver.url("/now"), "in": "0s", "id": "zero"})
    done = timerctl(env, "create", "--from-file", "-", stdin=line + "\n")
    assert done.returncode == 0, done
    [created] = [json.loads(x) for x in done.stdout.splitlines()]
    assert created["expiryTime"] == created["createdAt"]
    [hit] = receiver.wait_for(1, timeout=10, path="/now")
    lateness = hit.received_at - parse_instant(created["expiryTime"]).timestamp()
    print(f"0s timer received {lateness * 1000:.0f} ms after its expiry")
    assert lateness < 1.0, f"a 0s timer fired {lateness:.2f}s late"
    wait_until(lambda: stored(tmp_path)["zero"].status is Status.FINISHED, timeout=10, message="zero Finished")
    assert runner.stop(signal.SIGTERM, 30)[0] == 0


# --- the thundering herd --------------------------------------------------------------------------------

HERD = 10_000


def start_bench_receiver(out: Path) -> tuple[subprocess.Popen[str], str]:
    """bench/receiver.py (asyncio, keep-alive) on a free port; prints "ready", writes ``out`` on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_RECEIVER), str(port), str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"bench receiver said {line!r}"
    return proc, f"http://127.0.0.1:{port}/herd"


def test_ten_thousand_timers_due_at_the_same_millisecond_fire_once_each(
    tmp_path: Path, spawn: Callable[..., RunnerProcess]
) -> None:
    out = tmp_path / "received.jsonl"
    receiver, url = start_bench_receiver(out)
    try:
        created = utc(datetime.now(UTC))
        expiry = created + timedelta(seconds=3)  # the runner starts meanwhile: every timer is due at once
        store = SqliteStore(str(tmp_path / "timers.db"))
        try:
            store.insert_many([make_timer(f"herd-{i:05d}", expiry, url=url, created_at=created) for i in range(HERD)])
            assert store.counts()[Status.SCHEDULED] == HERD
            runner = spawn(process_env(tmp_path), level="WARNING")

            def all_finished() -> bool:
                if runner.proc.poll() is not None:
                    raise AssertionError(f"runner exited {runner.proc.returncode}: {runner.log.read_text()}")
                return store.counts()[Status.FINISHED] == HERD

            wait_until(all_finished, timeout=50, interval=0.2, message=f"{HERD} timers Finished")
            counts = store.counts()
        finally:
            store.close()
        assert runner.stop(signal.SIGTERM, 30)[0] == 0
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=30)
        if receiver.stdout is not None:
            receiver.stdout.close()
    assert counts[Status.FINISHED] == HERD and sum(counts.values()) == HERD, counts

    got = [json.loads(line) for line in out.read_text().splitlines()]
    per_timer = Counter(item["timerId"] for item in got)
    assert set(per_timer) == {f"herd-{i:05d}" for i in range(HERD)}
    assert [t for t, n in per_timer.items() if n != 1] == [], "some timers were delivered more than once"
    assert {item["attempt"] for item in got} == {1}
    received = sorted(i["receivedAt"] for i in got)
    first, median, last = received[0], received[len(received) // 2], received[-1]
    due = expiry.timestamp()
    print(
        f"\nthundering herd: {HERD} timers due at {format_instant(expiry)}: received from "
        f"{(first - due) * 1000:+.0f} ms (median {(median - due) * 1000:+.0f} ms) to {(last - due) * 1000:+.0f} ms "
        f"after expiry; spread {last - first:.2f} s ({HERD / max(last - first, 1e-9):.0f} deliveries/s)"
    )
    assert first >= due - 0.001, "a timer fired before its expiry"


# --- daylight saving time -------------------------------------------------------------------------------


def test_a_naive_time_in_the_spring_forward_gap_moves_forward_by_the_gap(berlin: ZoneInfo) -> None:
    zone = berlin
    at = parse_time("2026-03-29T02:30", zone)  # 02:00-03:00 does not exist that night in Berlin
    assert at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # read with the offset before the gap, +01:00
    assert at.astimezone(zone).replace(tzinfo=None) == datetime(2026, 3, 29, 3, 30)  # 03:30 CEST


def test_a_naive_time_in_the_autumn_fold_is_the_first_of_the_two(berlin: ZoneInfo) -> None:
    zone = berlin
    at = parse_time("2026-10-25T02:30", zone)  # 02:00-03:00 happens twice that night in Berlin
    assert at == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first, still summer time (+02:00)
    # An explicit offset picks either one.
    assert parse_time("2026-10-25T02:30+01:00", zone) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert parse_time("2026-10-25T02:30+02:00", zone) == at


def berlin_transitions(zone: ZoneInfo, after: datetime, days: int = 366) -> dict[str, date]:
    """The dates of the next spring-forward ("gap") and fall-back ("fold") in Berlin (``zone``) after ``after``."""
    found: dict[str, date] = {}
    hour = after.replace(minute=0, second=0, microsecond=0)
    for _ in range(days * 24):
        before, hour = hour, hour + timedelta(hours=1)
        old, new = before.astimezone(zone).utcoffset(), hour.astimezone(zone).utcoffset()
        if old is not None and new is not None and old != new:
            found.setdefault("gap" if new > old else "fold", hour.astimezone(zone).date())
    return found


@pytest.mark.parametrize(
    ("kind", "offset_hours"),
    [("fold", 2), ("gap", 1)],
    ids=["autumn-fold-first-of-two", "spring-gap-moves-forward"],
)
def test_create_at_a_naive_dst_time_stores_the_documented_utc_expiry(
    tmp_path: Path, berlin: ZoneInfo, kind: str, offset_hours: int
) -> None:
    """``timerctl create --at YYYY-MM-DDT02:30`` with TZ=Europe/Berlin on the next night the clocks change.

    The date is the next transition after today (a fixed 2026 date would be refused as past or, later,
    beyond the horizon). The fold takes summer time's +02:00 (the first 02:30); in the gap 02:30 is read
    with the +01:00 in force before it, which is 03:30 summer time.
    """
    day = berlin_transitions(berlin, datetime.now(UTC) + timedelta(days=1))[kind]
    local = f"{day.isoformat()}T02:30"
    done = timerctl(
        {**process_env(tmp_path), "TZ": "Europe/Berlin"}, "create", "--url", URL, "--at", local, "--json", "--id", kind
    )
    assert done.returncode == 0, done.stderr
    expected = datetime.fromisoformat(local).replace(tzinfo=UTC) - timedelta(hours=offset_hours)
    assert json.loads(done.stdout)["expiryTime"] == format_instant(expected)
    assert stored(tmp_path)[kind].expiry_time == expected


@pytest.mark.usefixtures("berlin")  # skips without the zone, as TZ=Europe/Berlin would not be it
def test_create_in_1d_under_a_dst_zone_is_86400_seconds_in_utc(tmp_path: Path) -> None:
    """The same through the command line with TZ=Europe/Berlin: the zone plays no part in a delay
    (``TimerService`` with a clock at noon before each DST change: ``test_service.py``)."""
    env = {**process_env(tmp_path), "TZ": "Europe/Berlin"}
    done = timerctl(env, "create", "--url", URL, "--in", "1d", "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    span = parse_instant(created["expiryTime"]) - parse_instant(created["createdAt"])
    assert span == timedelta(seconds=86_400)

"""Clock edge cases: instants already past, timers due at the same millisecond, and DST in local time.

Durations are absolute: ``--in 1d`` is 86,400 s of real time, whatever the wall clock does meanwhile.
Naive local times resolve as ``zoneinfo`` does (README, Input rules): fold=0, so a repeated time is
the first of the two and a skipped time moves forward by the gap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from tests.fixtures_http import Receiver, wait_until
from tests.fixtures_kafka import free_port
from timerctl.config import Settings
from timerctl.model import Status, Timer, format_instant, parse_instant, utc
from timerctl.service import TimerService
from timerctl.spec import build_spec
from timerctl.stores.sqlite import SqliteStore
from timerctl.timeparse import parse_time

TIMERCTL = str(Path(sys.executable).with_name("timerctl"))
BENCH_RECEIVER = Path(__file__).resolve().parents[2] / "bench" / "receiver.py"
URL = "http://127.0.0.1:9/hook"


def berlin() -> ZoneInfo:
    try:
        return ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:
        pytest.skip("no tz database entry for Europe/Berlin on this machine (installing tzdata is not allowed)")


def base_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This environment without TIMERCTL_*/systemd variables, on the test's own store and no config file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIMERCTL_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
    }
    env.update(TIMERCTL_DB=str(tmp_path / "timers.db"), TIMERCTL_CONFIG=os.devnull)
    env.update({f"TIMERCTL_{k.upper()}": v for k, v in settings.items()})
    return env


def timerctl(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TIMERCTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=30)


def stored(tmp_path: Path) -> dict[str, Timer]:
    store = SqliteStore(str(tmp_path / "timers.db"))
    try:
        return {t.timer_id: t for t in store.find(limit=100_000)}
    finally:
        store.close()


class Runner:
    """One ``timerctl serve runner`` process with its JSON log in a file; always stopped."""

    def __init__(self, env: dict[str, str], log: Path, level: str = "INFO") -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [TIMERCTL, "serve", "runner", "--log-format", "json", "--log-level", level],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited {self.proc.returncode}: {self.log.read_text()}")
            return any(e.get("event") == "runner_started" for e in self.events())

        wait_until(ready, timeout=15, message="the runner to start")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for runner in started:
        if runner.proc.poll() is None:
            runner.proc.kill()
            runner.proc.wait(timeout=10)


# --- instants already past ------------------------------------------------------------------------------


def test_from_file_refuses_past_instants_line_by_line_and_creates_the_rest(tmp_path: Path) -> None:
    env = base_env(tmp_path)
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
    tmp_path: Path, receiver: Receiver, runners: list[Runner]
) -> None:
    env = base_env(tmp_path, poll_interval="0.1")
    runner = Runner(env, tmp_path / "runner.log")
    runners.append(runner)
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
    assert runner.stop() == 0


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


def test_ten_thousand_timers_due_at_the_same_millisecond_fire_once_each(tmp_path: Path, runners: list[Runner]) -> None:
    out = tmp_path / "received.jsonl"
    receiver, url = start_bench_receiver(out)
    try:
        created = utc(datetime.now(UTC))
        expiry = created + timedelta(seconds=3)  # the runner starts meanwhile: every timer is due at once
        store = SqliteStore(str(tmp_path / "timers.db"))
        try:
            store.insert_many([Timer(f"herd-{i:05d}", url, expiry, created) for i in range(HERD)])
            assert store.counts()[Status.SCHEDULED] == HERD
            runner = Runner(base_env(tmp_path), tmp_path / "runner.log", level="WARNING")
            runners.append(runner)

            def all_finished() -> bool:
                if runner.proc.poll() is not None:
                    raise AssertionError(f"runner exited {runner.proc.returncode}: {runner.log.read_text()}")
                return store.counts()[Status.FINISHED] == HERD

            wait_until(all_finished, timeout=50, interval=0.2, message=f"{HERD} timers Finished")
            counts = store.counts()
        finally:
            store.close()
        assert runner.stop() == 0
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


def test_a_naive_time_in_the_spring_forward_gap_moves_forward_by_the_gap() -> None:
    zone = berlin()
    at = parse_time("2026-03-29T02:30", zone)  # 02:00-03:00 does not exist that night in Berlin
    assert at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # read with the offset before the gap, +01:00
    assert at.astimezone(zone).replace(tzinfo=None) == datetime(2026, 3, 29, 3, 30)  # 03:30 CEST


def test_a_naive_time_in_the_autumn_fold_is_the_first_of_the_two() -> None:
    zone = berlin()
    at = parse_time("2026-10-25T02:30", zone)  # 02:00-03:00 happens twice that night in Berlin
    assert at == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first, still summer time (+02:00)
    # An explicit offset picks either one.
    assert parse_time("2026-10-25T02:30+01:00", zone) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert parse_time("2026-10-25T02:30+02:00", zone) == at


def berlin_transitions(after: datetime, days: int = 366) -> dict[str, date]:
    """The dates of the next spring-forward ("gap") and fall-back ("fold") in Berlin after ``after``."""
    zone = berlin()
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
    tmp_path: Path, kind: str, offset_hours: int
) -> None:
    """``timerctl create --at YYYY-MM-DDT02:30`` with TZ=Europe/Berlin on the next night the clocks change.

    The date is the next transition after today (a fixed 2026 date would be refused as past or, later,
    beyond the horizon). The fold takes summer time's +02:00 (the first 02:30); in the gap 02:30 is read
    with the +01:00 in force before it, which is 03:30 summer time.
    """
    berlin()
    day = berlin_transitions(datetime.now(UTC) + timedelta(days=1))[kind]
    local = f"{day.isoformat()}T02:30"
    done = timerctl(
        {**base_env(tmp_path), "TZ": "Europe/Berlin"}, "create", "--url", URL, "--at", local, "--json", "--id", kind
    )
    assert done.returncode == 0, done.stderr
    expected = datetime.fromisoformat(local).replace(tzinfo=UTC) - timedelta(hours=offset_hours)
    assert json.loads(done.stdout)["expiryTime"] == format_instant(expected)
    assert stored(tmp_path)[kind].expiry_time == expected


@pytest.mark.parametrize(
    "local_now",
    [datetime(2026, 3, 28, 12, 0), datetime(2026, 10, 24, 12, 0)],
    ids=["across-spring-forward", "across-fall-back"],
)
def test_a_one_day_delay_across_a_dst_change_is_exactly_86400_seconds(tmp_path: Path, local_now: datetime) -> None:
    """Durations are absolute: ``--in 1d`` created at noon the day before a DST change expires 86,400 s later
    in UTC, which on the local wall clock is 13:00 (spring) or 11:00 (autumn), not noon again."""
    zone: tzinfo = berlin()
    created = local_now.replace(tzinfo=zone)
    spec = build_spec(URL, zone, delay="1d")
    with TimerService(Settings(db=str(tmp_path / "timers.db")), clock=lambda: created.astimezone(UTC)) as svc:
        timer = svc.create(spec).timer
    assert timer.expiry_time - timer.created_at == timedelta(seconds=86_400)
    assert stored(tmp_path)[timer.timer_id].expiry_time == utc(created) + timedelta(days=1)
    wall = timer.expiry_time.astimezone(zone)
    assert wall.date() == local_now.date() + timedelta(days=1)
    assert wall.hour == (13 if local_now.month == 3 else 11)


def test_create_in_1d_under_a_dst_zone_is_86400_seconds_in_utc(tmp_path: Path) -> None:
    """The same through the command line with TZ=Europe/Berlin: the zone plays no part in a delay."""
    berlin()
    env = {**base_env(tmp_path), "TZ": "Europe/Berlin"}
    done = timerctl(env, "create", "--url", URL, "--in", "1d", "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    span = parse_instant(created["expiryTime"]) - parse_instant(created["createdAt"])
    assert span == timedelta(seconds=86_400)

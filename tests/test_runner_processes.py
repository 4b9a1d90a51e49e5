"""``timerctl serve runner`` as real processes: the CLI end to end, several runners, SIGKILL, SIGTERM/SIGINT.

Each runner is the installed console script with its settings in TIMERCTL_* variables and its JSON log
in a file (``spawn``); the test reads outcomes through its own connection to the same SQLite file. A row
left corrupt by another tool must not stop a runner either.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.factories import FAST, all_in, make_timer, now, process_env, statuses, timerctl
from tests.fixtures_daemons import RunnerProcess, all_held
from tests.fixtures_http import Receiver, roomy, wait_until
from tests.fixtures_stores import corrupt
from timerctl import __version__
from timerctl.model import Status, parse_instant
from timerctl.stores.sqlite import SqliteStore


def cli(env: dict[str, str], *args: str) -> Any:
    """Run one ``timerctl`` command and return its JSON output; fail the test on a non-zero exit."""
    done = timerctl(env, *args)
    assert done.returncode == 0, f"timerctl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


def status_column(db: Path, timer_id: str) -> tuple[str, str | None]:
    """The status and lastError columns of a row as stored, without decoding it."""
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT status, last_error FROM timers WHERE timer_id = ?", (timer_id,)).fetchone()
    return row[0], row[1]


def test_create_then_serve_delivers_one_post_at_expiry(
    tmp_path: Path, receiver: Receiver, spawn: Callable[..., RunnerProcess]
) -> None:
    env = process_env(tmp_path, FAST)
    runner = spawn(env)
    runner.wait_ready()

    created = cli(env, "create", "--in", "2s", "--url", receiver.url("/x"), "--payload", '{"k": [1, "two"]}', "--json")
    timer_id = created["timerId"]
    expiry = parse_instant(created["expiryTime"])
    (got,) = receiver.wait_for(1, timeout=8)
    shown = wait_until(lambda: (t := cli(env, "get", timer_id, "--json"))["timerStatus"] == "Finished" and t, timeout=5)

    assert got.path == "/x"
    assert got.json == {
        "timerId": timer_id,
        "expiryTime": created["expiryTime"],
        "firedAt": got.json["firedAt"],
        "attempt": 1,
        "payload": {"k": [1, "two"]},
    }
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == f"timerctl/{__version__}"
    assert got.headers["idempotency-key"] == timer_id
    assert expiry.timestamp() <= got.received_at < expiry.timestamp() + 1.0
    assert expiry <= parse_instant(got.json["firedAt"]) < expiry + timedelta(seconds=1)
    assert shown["firedAt"] == got.json["firedAt"]
    assert shown["attempts"] == 1
    assert shown["lastError"] is None
    assert len(receiver.requests) == 1
    assert runner.proc.poll() is None


def test_two_runner_processes_fire_every_timer_exactly_once(
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[..., RunnerProcess]
) -> None:
    roomy(receiver)
    # A short lookahead and small batches, so both runners keep claiming from the same due set.
    env = process_env(tmp_path, FAST, lookahead="0.2", claim_batch=50, lease=10)
    runners = [spawn(env), spawn(env)]
    for runner in runners:
        runner.wait_ready()
    first_due = now() + timedelta(seconds=0.5)
    timers = [
        make_timer(f"m-{i:03d}", first_due + timedelta(milliseconds=3 * i), url=receiver.url("/many"))
        for i in range(500)
    ]
    assert store.insert_many(timers) == 500

    wait_until(lambda: store.counts()[Status.FINISHED] == 500, timeout=30, message="500 timers Finished")

    received = Counter(r.json["timerId"] for r in receiver.requests)
    assert set(received) == {t.timer_id for t in timers}
    assert [tid for tid, n in received.items() if n > 1] == []
    assert len(receiver.requests) == 500
    assert [r.json for r in receiver.requests if r.json["attempt"] != 1] == []
    lateness = [parse_instant(r.json["firedAt"]) - parse_instant(r.json["expiryTime"]) for r in receiver.requests]
    assert timedelta(0) <= min(lateness) and max(lateness) < timedelta(seconds=1), max(lateness)
    fired = [runner.fired() for runner in runners]
    assert sum(fired) == 500
    assert all(n > 0 for n in fired), f"both runners should have fired some: {fired}"


def test_a_killed_runners_timers_are_fired_by_another_once_the_leases_expire(
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[..., RunnerProcess]
) -> None:
    receiver.hang("/slow", 0.5)  # about twenty POSTs in flight at any moment
    roomy(receiver)
    env = process_env(tmp_path, FAST, lease=2)
    first = spawn(env)
    first.wait_ready()
    first_due = now() + timedelta(seconds=0.3)
    timers = [
        make_timer(f"k-{i:02d}", first_due + timedelta(milliseconds=25 * i), url=receiver.url("/slow"))
        for i in range(60)
    ]
    ids = {t.timer_id for t in timers}
    store.insert_many(timers)

    receiver.wait_for(10, timeout=10)
    killed_at = time.time()
    first.proc.kill()
    first.proc.wait(timeout=5)
    left_running = {t.timer_id for t in store.find(status=Status.RUNNING, limit=1000)}
    unfinished = ids - {t.timer_id for t in store.find(status=Status.FINISHED, limit=1000)}
    assert left_running, "the kill should leave claimed timers behind"

    second = spawn(env)
    wait_until(lambda: all_in(store, sorted(ids), Status.FINISHED), timeout=15, message="every timer Finished")
    wait_until(lambda: ids <= {r.json["timerId"] for r in receiver.requests}, timeout=5, message="every timer received")

    received = Counter(r.json["timerId"] for r in receiver.requests)
    sent_by_first = {
        r.json["timerId"] for r in receiver.requests if parse_instant(r.json["firedAt"]).timestamp() < killed_at
    }
    in_flight_at_kill = sent_by_first & left_running
    duplicates = {tid for tid, n in received.items() if n > 1}
    assert in_flight_at_kill, "some POSTs should have been in flight at the kill"
    assert duplicates <= in_flight_at_kill
    assert max(received.values()) <= 2
    assert second.fired() == len(unfinished)


def test_with_default_settings_a_killed_runners_claims_fire_within_10s_of_their_instant(
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[..., RunnerProcess]
) -> None:
    """Issue 12's bound with nothing tuned: the default lease (8 s, renewed every 2 s) lets another runner
    fire a killed runner's claimed timers within 10 s of their instant; it had claimed them before any
    was due, so nothing is received twice."""
    roomy(receiver)
    env = process_env(tmp_path)  # no settings but the store, and no config file of the machine's either
    due = now() + timedelta(seconds=2.5)
    timers = [
        make_timer(f"d-{i:02d}", due + timedelta(milliseconds=10 * i), url=receiver.url("/takeover")) for i in range(40)
    ]
    ids = sorted(t.timer_id for t in timers)
    store.insert_many(timers)
    first = spawn(env)
    # Claimed within the default 2 s lookahead, before any is due.
    wait_until(lambda: all_held(store, ids), timeout=10, message="the first runner's claims")
    first.proc.kill()
    first.proc.wait(timeout=5)
    assert receiver.requests == [] and now() < due, "killed before anything was due"

    spawn(env)
    got = receiver.wait_for(len(ids), timeout=20)
    late = {r.json["timerId"]: r.received_at - parse_instant(r.json["expiryTime"]).timestamp() for r in got}
    assert sorted(late) == ids and len(got) == len(ids), "each timer received exactly once"
    assert min(late.values()) >= 0 and max(late.values()) <= 10.0, max(late.values())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_inflight_releases_the_rest_and_exits_0(
    signum: int,
    tmp_path: Path,
    receiver: Receiver,
    store: SqliteStore,
    spawn: Callable[..., RunnerProcess],
) -> None:
    receiver.hang("/slow", 1.5)
    drain_timeout = 5.0
    env = process_env(tmp_path, FAST, lookahead=30, lease=10, drain_timeout=drain_timeout)
    runner = spawn(env)
    runner.wait_ready()
    due = now() + timedelta(seconds=0.5)
    inflight = [make_timer(f"f-{i}", due, url=receiver.url("/slow")) for i in range(3)]
    ahead = [make_timer(f"a-{i}", due + timedelta(seconds=20), url=receiver.url("/ahead")) for i in range(3)]
    store.insert_many(inflight + ahead)
    ids = [t.timer_id for t in inflight + ahead]
    wait_until(lambda: all_held(store, ids), timeout=5, message="all six claimed")
    # The POSTs start at the expiry and the receiver holds them 1.5 s; signal in the middle of that.
    wait_until(lambda: now() >= due + timedelta(seconds=0.5), timeout=5, message="the expiry to pass")

    signalled_at = time.time()
    code, took = runner.stop(signum, timeout=drain_timeout + 5)

    assert code == 0
    assert took < drain_timeout
    got = receiver.requests
    assert sorted(r.json["timerId"] for r in got) == ["f-0", "f-1", "f-2"]
    assert all(parse_instant(r.json["firedAt"]).timestamp() < signalled_at < r.received_at for r in got)
    assert statuses(store, ids) == {
        **{t.timer_id: Status.FINISHED for t in inflight},
        **{t.timer_id: Status.SCHEDULED for t in ahead},
    }
    for timer in ahead:
        released = store.get(timer.timer_id)
        assert released is not None
        assert (released.lease_owner, released.lease_until, released.attempts) == (None, None, 0)


def test_the_drain_is_bounded_by_the_drain_timeout(
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[..., RunnerProcess]
) -> None:
    receiver.hang("/stuck", 3.0)
    env = process_env(tmp_path, FAST, lease=30, drain_timeout=1, request_timeout=10)
    runner = spawn(env)
    runner.wait_ready()
    due = now() + timedelta(seconds=0.3)
    store.insert(make_timer("t-stuck", due, url=receiver.url("/stuck")))
    wait_until(lambda: all_in(store, ["t-stuck"], Status.RUNNING), timeout=5)
    wait_until(lambda: now() >= due + timedelta(seconds=0.5), timeout=5, message="the expiry to pass")

    code, took = runner.stop(signal.SIGTERM, timeout=6)

    assert code == 0
    assert 0.9 <= took < 3.0
    # Still leased: another runner retries it once the lease expires.
    assert statuses(store, ["t-stuck"]) == {"t-stuck": Status.RUNNING}


def test_a_second_signal_skips_the_drain(
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[..., RunnerProcess]
) -> None:
    receiver.hang("/stuck", 3.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        # systemd's notify protocol tells the test when the runner has begun to stop.
        address = f"timerctl-test-{uuid.uuid4().hex}"
        notify.bind("\0" + address)
        notify.settimeout(10)
        env = {**process_env(tmp_path, FAST, lease=30, drain_timeout=20), "NOTIFY_SOCKET": "@" + address}
        runner = spawn(env)
        assert notify.recv(64) == b"READY=1"
        due = now() + timedelta(seconds=0.3)
        store.insert(make_timer("t-stuck", due, url=receiver.url("/stuck")))
        wait_until(lambda: all_in(store, ["t-stuck"], Status.RUNNING), timeout=5)
        wait_until(lambda: now() >= due + timedelta(seconds=0.5), timeout=5, message="the expiry to pass")

        sent = time.monotonic()
        runner.proc.send_signal(signal.SIGTERM)
        assert notify.recv(64) == b"STOPPING=1"
        runner.proc.send_signal(signal.SIGTERM)
        code = runner.proc.wait(timeout=10)

    assert code == 0
    assert time.monotonic() - sent < 2.0, "the forced stop did not wait for the 3 s delivery"
    assert statuses(store, ["t-stuck"]) == {"t-stuck": Status.RUNNING}


def test_runner_fails_a_corrupt_row_keeps_running_and_fires_the_good_timer(
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[..., RunnerProcess]
) -> None:
    """Before the fix the runner died at start on the corrupt row (a crash loop under Restart=on-failure).

    The store's own tests of corrupt rows are in ``test_store_rows.py``.
    """
    db = tmp_path / "timers.db"
    start = datetime.now(UTC)
    # Both overdue, the corrupt one first: it is in the very first claim, ahead of the good one.
    store.insert_many(
        [
            make_timer(tid, due, url=receiver.url(f"/{tid}"), created_at=due - timedelta(minutes=1), payload={"n": tid})
            for tid, due in (("bad", start - timedelta(seconds=2)), ("good", start - timedelta(seconds=1)))
        ]
    )
    corrupt(db, "bad", "payload", "{this is not json")
    runner = spawn(process_env(tmp_path, poll_interval="0.1", lease="5s"), this_tree=True)

    (got,) = receiver.wait_for(1, timeout=15, path="/good")
    assert got.json["timerId"] == "good"
    _, error = wait_until(lambda: (s := status_column(db, "bad"))[0] == "Failed" and s, message="bad Failed")
    assert error is not None and error.startswith("stored timer is corrupt: payload is not valid JSON")
    wait_until(lambda: status_column(db, "good")[0] == "Finished", message="good Finished")
    assert runner.proc.poll() is None, runner.log.read_text()
    assert receiver.requests == [got]
    events = runner.events()
    assert any("bad" in e["message"] and "marked Failed" in e["message"] for e in events), events

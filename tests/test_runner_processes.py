"""``timerctl serve runner`` as real processes: the CLI end to end, several runners, SIGKILL, SIGTERM/SIGINT.

Each runner is the installed console script with its settings in TIMERCTL_* variables and its JSON log
in a file; the test reads outcomes through its own connection to the same SQLite file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_http import Receiver, wait_until
from tests.test_runner import all_in, make_timer, now, runner_env, statuses
from timerctl import __version__
from timerctl.model import Status, parse_instant
from timerctl.stores.sqlite import SqliteStore


def timerctl_bin() -> str:
    """The installed console script of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("timerctl")
    found = str(beside) if beside.exists() else shutil.which("timerctl")
    if not found:
        pytest.fail("the timerctl console script is not installed next to the test interpreter")
    return found


def process_env(tmp_path: Path, **overrides: object) -> dict[str, str]:
    """The test's environment without any TIMERCTL_* or systemd variables, plus this store's settings."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIMERCTL_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
    }
    return {**inherited, **runner_env(tmp_path, **overrides)}


def cli(env: dict[str, str], *args: str) -> Any:
    """Run one ``timerctl`` command and return its JSON output; fail the test on a non-zero exit."""
    done = subprocess.run([timerctl_bin(), *args], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"timerctl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


class RunnerProcess:
    """One ``timerctl serve runner`` with its JSON log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [timerctl_bin(), "serve", "runner", "--log-format", "json"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_ready(self, timeout: float = 15) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited {self.proc.returncode}: {self.log.read_text()}")
            return any(e.get("event") == "runner_started" for e in self.events())

        wait_until(ready, timeout=timeout, message="the runner to start")

    def fired(self) -> int:
        return sum(1 for e in self.events() if e.get("event") == "fired")

    def stop(self, signum: int, timeout: float) -> tuple[int, float]:
        """Send ``signum``; the exit code and how long the process took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - sent


def roomy(receiver: Receiver) -> None:
    """Give the receiver a listen backlog fit for bursts of new connections.

    The fixture keeps socketserver's backlog of 5: a burst of connects overflows it, the kernel drops SYNs
    and each dropped connect waits a 1 s retransmit (or times out and is retried), which reads as lateness.
    """
    receiver.server.socket.listen(512)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    """The test's own connection to the store file the runners use."""
    db = SqliteStore(str(tmp_path / "timers.db"))
    yield db
    db.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], RunnerProcess]]:
    """Start runner processes; whatever is still running at the end of the test is killed."""
    started: list[RunnerProcess] = []

    def start(env: dict[str, str]) -> RunnerProcess:
        runner = RunnerProcess(env, tmp_path / f"runner-{len(started)}.log")
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.proc.poll() is None:
            runner.proc.kill()
        runner.proc.wait(timeout=10)


def test_create_then_serve_delivers_one_post_at_expiry(
    tmp_path: Path, receiver: Receiver, spawn: Callable[[dict[str, str]], RunnerProcess]
) -> None:
    env = process_env(tmp_path)
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
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[[dict[str, str]], RunnerProcess]
) -> None:
    roomy(receiver)
    # A short lookahead and small batches, so both runners keep claiming from the same due set.
    env = process_env(tmp_path, lookahead="0.2", claim_batch=50, lease=10)
    runners = [spawn(env), spawn(env)]
    for runner in runners:
        runner.wait_ready()
    first_due = now() + timedelta(seconds=0.5)
    timers = [
        make_timer(f"m-{i:03d}", receiver.url("/many"), first_due + timedelta(milliseconds=3 * i)) for i in range(500)
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
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[[dict[str, str]], RunnerProcess]
) -> None:
    receiver.hang("/slow", 0.5)  # about twenty POSTs in flight at any moment
    roomy(receiver)
    env = process_env(tmp_path, lease=2)
    first = spawn(env)
    first.wait_ready()
    first_due = now() + timedelta(seconds=0.3)
    timers = [
        make_timer(f"k-{i:02d}", receiver.url("/slow"), first_due + timedelta(milliseconds=25 * i)) for i in range(60)
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
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[[dict[str, str]], RunnerProcess]
) -> None:
    """Issue 12's bound with nothing tuned: the default lease (8 s, renewed every 2 s) lets another runner
    fire a killed runner's claimed timers within 10 s of their instant; it had claimed them before any
    was due, so nothing is received twice."""
    roomy(receiver)
    defaults = {k: v for k, v in process_env(tmp_path).items() if not k.startswith("TIMERCTL_")}
    (tmp_path / "empty.toml").touch()  # no config file of the machine's either
    env = {**defaults, "TIMERCTL_DB": str(tmp_path / "timers.db"), "TIMERCTL_CONFIG": str(tmp_path / "empty.toml")}
    due = now() + timedelta(seconds=2.5)
    timers = [
        make_timer(f"d-{i:02d}", receiver.url("/takeover"), due + timedelta(milliseconds=10 * i)) for i in range(40)
    ]
    ids = sorted(t.timer_id for t in timers)
    store.insert_many(timers)
    first = spawn(env)
    # Claimed within the default 2 s lookahead, before any is due.
    wait_until(lambda: all_in(store, ids, Status.RUNNING), timeout=10, message="the first runner's claims")
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
    spawn: Callable[[dict[str, str]], RunnerProcess],
) -> None:
    receiver.hang("/slow", 1.5)
    drain_timeout = 5.0
    env = process_env(tmp_path, lookahead=30, lease=10, drain_timeout=drain_timeout)
    runner = spawn(env)
    runner.wait_ready()
    due = now() + timedelta(seconds=0.5)
    inflight = [make_timer(f"f-{i}", receiver.url("/slow"), due) for i in range(3)]
    ahead = [make_timer(f"a-{i}", receiver.url("/ahead"), due + timedelta(seconds=20)) for i in range(3)]
    store.insert_many(inflight + ahead)
    ids = [t.timer_id for t in inflight + ahead]
    wait_until(lambda: all_in(store, ids, Status.RUNNING), timeout=5, message="all six claimed")
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
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[[dict[str, str]], RunnerProcess]
) -> None:
    receiver.hang("/stuck", 3.0)
    env = process_env(tmp_path, lease=30, drain_timeout=1, request_timeout=10)
    runner = spawn(env)
    runner.wait_ready()
    due = now() + timedelta(seconds=0.3)
    store.insert(make_timer("t-stuck", receiver.url("/stuck"), due))
    wait_until(lambda: all_in(store, ["t-stuck"], Status.RUNNING), timeout=5)
    wait_until(lambda: now() >= due + timedelta(seconds=0.5), timeout=5, message="the expiry to pass")

    code, took = runner.stop(signal.SIGTERM, timeout=6)

    assert code == 0
    assert 0.9 <= took < 3.0
    # Still leased: another runner retries it once the lease expires.
    assert statuses(store, ["t-stuck"]) == {"t-stuck": Status.RUNNING}


def test_a_second_signal_skips_the_drain(
    tmp_path: Path, receiver: Receiver, store: SqliteStore, spawn: Callable[[dict[str, str]], RunnerProcess]
) -> None:
    receiver.hang("/stuck", 3.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        # systemd's notify protocol tells the test when the runner has begun to stop.
        address = f"timerctl-test-{uuid.uuid4().hex}"
        notify.bind("\0" + address)
        notify.settimeout(10)
        env = {**process_env(tmp_path, lease=30, drain_timeout=20), "NOTIFY_SOCKET": "@" + address}
        runner = spawn(env)
        assert notify.recv(64) == b"READY=1"
        due = now() + timedelta(seconds=0.3)
        store.insert(make_timer("t-stuck", receiver.url("/stuck"), due))
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

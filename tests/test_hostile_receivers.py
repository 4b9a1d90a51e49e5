"""Delivery against hostile receivers: huge bodies, hosts that never answer, malformed answers, our own bugs.

Every receiver is a real socket on loopback (``tests/hostile_servers.py``). Memory and fairness are
measured on ``timerctl serve runner`` processes (VmHWM of the process, receipt times at a healthy
receiver); the rest runs a runner in-process over a SQLite file, built as ``serve`` builds it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures_http import Received, Receiver, wait_until
from tests.hostile_servers import RawServer, echoed_status_line, huge_body, oversized_headers, vm_hwm_mb
from tests.test_runner import make_timer, now, settings_for
from tests.test_runner_processes import RunnerProcess, process_env, roomy
from tests.test_signing import SECRET, serving
from timerctl.config import Settings
from timerctl.daemons.runner import make_deliverer
from timerctl.delivery import Attempt, Deliverer, Signer
from timerctl.logs import JsonFormatter
from timerctl.model import Status, Timer
from timerctl.stores.sqlite import SqliteStore

#: Junk each huge-body receiver sends at most: enough that a runner buffering it shows (twice this, as
#: aiohttp joins the chunks it read), little enough that the old code's failure does not hurt a shared machine.
JUNK_CAP = 160 << 20
#: The documented bound on a runner's peak RSS while a receiver answers 1 GiB.
PEAK_RSS_MB = 200
#: No retry within a test: what the first attempt ended as stays in the store.
NO_RETRY_SOON = {"retry_first_delay": 60, "retry_max_delay": 60}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db = SqliteStore(str(tmp_path / "timers.db"))
    yield db
    db.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], RunnerProcess]]:
    """Start ``timerctl serve runner`` processes; whatever still runs at the end of the test is killed."""
    started: list[RunnerProcess] = []

    def start(env: dict[str, str]) -> RunnerProcess:
        runner = RunnerProcess(env, tmp_path / f"runner-{len(started)}.log")
        started.append(runner)
        runner.wait_ready()
        return runner

    yield start
    for runner in started:
        if runner.proc.poll() is None:
            runner.proc.kill()
        runner.proc.wait(timeout=10)


@pytest.fixture
def servers() -> Iterator[Callable[..., RawServer]]:
    """Start hostile servers; all are closed at the end of the test."""
    started: list[RawServer] = []

    def start(*args: object, **kwargs: object) -> RawServer:
        server = RawServer(*args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def lateness(got: list[Received], timers: list[Timer]) -> list[float]:
    """Seconds from each timer's expiry to its first receipt, sorted."""
    due = {t.timer_id: t.expiry_time.timestamp() for t in timers}
    first: dict[str, float] = {}
    for item in got:
        first.setdefault(item.json["timerId"], item.received_at)
    return sorted(first[tid] - due[tid] for tid in first)


def p99(values: list[float]) -> float:
    return sorted(values)[math.ceil(0.99 * len(values)) - 1]


def tried(store: SqliteStore, ids: list[str]) -> list[Timer] | None:
    """The timers ``ids`` once each has an attempt recorded, else None."""
    timers = [store.get(tid) for tid in ids]
    done = [t for t in timers if t is not None and t.attempts]
    return done if len(done) == len(ids) else None


def spread(prefix: str, url: str, start: datetime, count: int, every_ms: int) -> list[Timer]:
    return [make_timer(f"{prefix}-{i:03d}", url, start + timedelta(milliseconds=every_ms * i)) for i in range(count)]


def test_a_gigabyte_response_is_not_read_and_other_timers_stay_on_time(
    tmp_path: Path,
    store: SqliteStore,
    receiver: Receiver,
    servers: Callable[..., RawServer],
    spawn: Callable[[dict[str, str]], RunnerProcess],
) -> None:
    """A 2xx with a huge body is delivered (the status decides); only its first 512 bytes are ever read."""
    roomy(receiver)
    sized = servers(huge_body(cap=JUNK_CAP), host="127.0.0.2")
    endless = servers(huge_body(chunked=True, cap=JUNK_CAP), host="127.0.0.3")
    runner = spawn(process_env(tmp_path, request_timeout=10, **NO_RETRY_SOON))
    baseline = vm_hwm_mb(runner.proc.pid)
    start = now() + timedelta(seconds=2.5)
    healthy = spread("ok", receiver.url("/ok"), start - timedelta(milliseconds=500), 60, 25)
    store.insert_many([make_timer("sized", sized.url(), start), make_timer("endless", endless.url(), start), *healthy])

    got = receiver.wait_for(len(healthy), timeout=12, path="/ok")
    hostile = wait_until(lambda: tried(store, ["sized", "endless"]), timeout=15, message="the hostile outcomes")
    peak = vm_hwm_mb(runner.proc.pid)

    assert peak < PEAK_RSS_MB, f"runner peak RSS {peak:.0f} MB (at start {baseline:.0f} MB)"
    for timer in hostile:
        assert timer.status is Status.FINISHED and timer.attempts == 1, timer
    # What the receivers managed to write before the runner closed: socket buffers, not the body.
    assert max(sized.sent + endless.sent) < 32 << 20, (sized.sent, endless.sent)
    late = lateness(got, healthy)
    assert late[-1] < 0.5, f"healthy deliveries late by up to {late[-1]:.3f}s"


def test_hosts_that_never_answer_do_not_delay_a_healthy_host(
    tmp_path: Path,
    store: SqliteStore,
    receiver: Receiver,
    servers: Callable[..., RawServer],
    spawn: Callable[[dict[str, str]], RunnerProcess],
) -> None:
    """Ten hosts x 32 timers that hang (more than the 256 overall slots), next to a healthy host."""
    roomy(receiver)
    silent = [servers(host=f"127.0.0.{i}") for i in range(2, 12)]
    # The hanging requests must really hang for the whole test: a timeout far beyond it.
    spawn(process_env(tmp_path, request_timeout=60, connect_timeout=10, **NO_RETRY_SOON))
    start = now() + timedelta(seconds=2.5)
    hanging = [
        make_timer(f"hang-{h}-{i:02d}", server.url(), start - timedelta(milliseconds=200))
        for h, server in enumerate(silent)
        for i in range(32)
    ]
    healthy = spread("ok", receiver.url("/ok"), start, 200, 10)
    store.insert_many(hanging + healthy)

    got = receiver.wait_for(len(healthy), timeout=2.5 + 2 + 6, path="/ok")
    accepted = [len(server.accepted) for server in silent]

    late = lateness(got, healthy)
    assert p99(late) <= 0.1, f"healthy p99 lateness {p99(late):.3f}s, max {late[-1]:.3f}s"
    assert all(1 <= n <= 4 for n in accepted), f"connections per hanging host {accepted}: the initial window is 4"


def test_a_host_that_keeps_timing_out_gets_one_slot_and_its_timers_still_time_out_and_retry(
    tmp_path: Path, store: SqliteStore, servers: Callable[..., RawServer]
) -> None:
    silent = servers(host="127.0.0.2")
    timeout = 1.0
    settings = settings_for(tmp_path, request_timeout=timeout, connect_timeout=1, **NO_RETRY_SOON)
    ids = [f"hang-{i}" for i in range(6)]
    store.insert_many([make_timer(tid, silent.url(), now()) for tid in ids])

    with serving(settings):
        timers = wait_until(lambda: tried(store, ids), timeout=4 * timeout + 5, message="every first attempt")
    accepted = list(silent.accepted)

    for timer in timers:
        assert timer.status is Status.SCHEDULED and timer.last_error == "timeout" and timer.attempts == 1, timer
        assert timer.due_at > now() + timedelta(seconds=20), "retried per policy, after its backoff"
    # Four at once (the initial window); after they timed out the window is 1: one at a time, each
    # started as soon as the one before gave its slot back.
    assert len(accepted) == 6
    assert accepted[3] - accepted[0] < 0.5
    assert timeout - 0.2 < accepted[4] - accepted[0] < timeout + 0.6
    assert timeout - 0.2 < accepted[5] - accepted[4] < timeout + 0.6


class ExplodingGuard:
    async def check(self, url: str) -> str:
        raise RuntimeError("guard bug")


class ExplodingSigner(Signer):
    def sign(self, msg_id: str, at: datetime, body: bytes) -> str:
        raise RuntimeError("signer bug")


class ExplodingDeliverer(Deliverer):
    async def deliver(self, timer: Timer, attempt: int, fired_at: datetime) -> Attempt:
        raise KeyError("deliverer bug")


class Bail(BaseException):
    """Not an Exception: what only an ``except BaseException`` catches."""


class BailingDeliverer(Deliverer):
    async def deliver(self, timer: Timer, attempt: int, fired_at: datetime) -> Attempt:
        raise Bail("bail")


def broken(settings: Settings, what: str) -> Deliverer:
    """The deliverer ``serve`` builds, with one part of it raising something nobody anticipated."""
    if what == "deliverer":
        return ExplodingDeliverer()
    if what == "base-exception":
        return BailingDeliverer()
    deliverer = make_deliverer(settings)
    if what == "guard":
        deliverer.guard = ExplodingGuard()
    else:
        deliverer.signer = ExplodingSigner([SECRET])
    return deliverer


@pytest.mark.parametrize(
    ("what", "error"),
    [
        ("guard", "RuntimeError: guard bug"),
        ("signer", "RuntimeError: signer bug"),
        ("deliverer", "KeyError: 'deliverer bug'"),
        ("base-exception", "Bail: bail"),
    ],
)
def test_an_unexpected_exception_ends_as_a_recorded_attempt_retried_per_policy(
    tmp_path: Path, store: SqliteStore, receiver: Receiver, what: str, error: str
) -> None:
    settings = settings_for(tmp_path, max_attempts=2, retry_first_delay="0.05")
    store.insert(make_timer("t-broken", receiver.url("/never"), now()))

    with serving(settings, broken(settings, what)) as runner:
        failed = wait_until(
            lambda: (t := store.get("t-broken")) and t.status is Status.FAILED and t, timeout=8, message="Failed"
        )
        wait_until(lambda: not runner.held, timeout=5, message="nothing left held")

    assert failed.attempts == 2
    assert failed.last_error == error
    assert failed.lease_owner is None
    assert receiver.requests == []


def test_no_secret_in_the_url_reaches_last_error_or_the_log(
    tmp_path: Path, store: SqliteStore, servers: Callable[..., RawServer], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's errors carry the whole URL, and these receivers echo the request line back too."""
    caplog.set_level(logging.DEBUG)
    echo = servers(echoed_status_line)
    oversized = servers(oversized_headers, host="127.0.0.2")
    urls = {
        "t-status": f"http://user:PASSWORD@127.0.0.1:{echo.port}/hook?token=SECRET",
        "t-headers": f"http://127.0.0.2:{oversized.port}/hook?token=SECRET&page=1",
    }
    store.insert_many([make_timer(tid, url, now()) for tid, url in urls.items()])

    with serving(settings_for(tmp_path, max_attempts=1)):
        failed = {
            tid: wait_until(lambda tid=tid: (t := store.get(tid)) and t.status is Status.FAILED and t, timeout=8)
            for tid in urls
        }

    assert "Bad status line" in (failed["t-status"].last_error or "")
    assert "Got more than 8190 bytes" in (failed["t-headers"].last_error or "")
    for timer in failed.values():
        assert "SECRET" not in (timer.last_error or "") and "PASSWORD" not in (timer.last_error or ""), timer
    lines = [JsonFormatter().format(record) for record in caplog.records]
    fired = [line for line in lines if '"event": "fired"' in line]
    assert len(fired) == 2 and all("127.0.0." in line for line in fired), fired
    assert [line for line in lines if "SECRET" in line or "PASSWORD" in line] == []

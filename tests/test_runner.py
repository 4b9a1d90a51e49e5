"""The runner in-process: a real SQLite file, a real HTTP receiver, the real event loop and clock.

Each test runs ``Runner(settings, SqliteStore(file)).run(stop)`` in a thread (``running``, with a
``CountingDeliverer`` noting each POST as it starts) or ``run(burst=True)``, on the ``FAST`` timings, and reads
the outcome back through a second connection to the same file, the way a CLI would.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.factories import FAST, all_in, make_timer, now, settings_for, statuses
from tests.fixtures_daemons import all_held, running
from tests.fixtures_http import Receiver, wait_until
from timerctl import __version__
from timerctl.clock import ManualClock
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag
from timerctl.daemons.runner import Runner
from timerctl.delivery import Attempt, Deliverer
from timerctl.model import BackendUnavailable, Status, Timer, parse_instant, utc
from timerctl.stores.sqlite import SqliteStore


class CountingDeliverer(Deliverer):
    """The real Deliverer, also noting each POST as it starts (the receiver only sees it once answered)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            request_timeout=settings.request_timeout,
            connect_timeout=settings.connect_timeout,
            concurrency=settings.concurrency,
            per_host=settings.per_host_concurrency,
        )
        self.started: list[str] = []

    async def deliver(self, timer: Timer, attempt: int, fired_at: datetime) -> Attempt:
        self.started.append(timer.timer_id)
        return await super().deliver(timer, attempt, fired_at)


class NoRenewRunner(Runner):
    """A runner whose lease renewals never land, as when its store stalls for longer than the lease."""

    def renew(self) -> None:
        return None


def started(runner: Runner) -> list[str]:
    assert isinstance(runner.deliverer, CountingDeliverer)
    return list(runner.deliverer.started)


def test_fires_at_expiry_with_the_documented_body_and_headers(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    payload = {"order": 42, "items": ["a", "é"], "nested": {"ok": True, "none": None}}
    expiry = now() + timedelta(seconds=1)
    store.insert(make_timer("t-1", expiry, url=receiver.url("/x?token=abc"), payload=payload))

    with running(settings_for(tmp_path, FAST), CountingDeliverer):
        (got,) = receiver.wait_for(1, timeout=5)
        done = wait_until(lambda: (t := store.get("t-1")) and t.status is Status.FINISHED and t, timeout=5)

    assert got.path == "/x"
    assert got.json == {
        "timerId": "t-1",
        "expiryTime": got.json["expiryTime"],
        "firedAt": got.json["firedAt"],
        "attempt": 1,
        "payload": payload,
    }
    assert parse_instant(got.json["expiryTime"]) == utc(expiry)
    fired_at = parse_instant(got.json["firedAt"])
    assert utc(expiry) <= fired_at < utc(expiry) + timedelta(seconds=1)
    assert expiry.timestamp() <= got.received_at < expiry.timestamp() + 1.0
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == f"timerctl/{__version__}"
    assert got.headers["idempotency-key"] == "t-1"
    assert done.attempts == 1
    assert done.last_error is None
    assert done.fired_at == fired_at, "the stored firedAt is the one the receiver was sent"
    assert done.lease_owner is None and done.lease_until is None
    assert len(receiver.requests) == 1


def test_a_500_is_retried_with_backoff_then_finishes(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    receiver.respond("/flaky", 500)
    store.insert(make_timer("t-flaky", now(), url=receiver.url("/flaky")))
    first_delay = 0.4

    with running(settings_for(tmp_path, FAST, retry_first_delay=first_delay), CountingDeliverer):
        first, second = receiver.wait_for(2, timeout=5)
        done = wait_until(lambda: (t := store.get("t-flaky")) and t.status is Status.FINISHED and t, timeout=5)

    assert [first.json["attempt"], second.json["attempt"]] == [1, 2]
    assert {first.headers["idempotency-key"], second.headers["idempotency-key"]} == {"t-flaky"}
    assert first.json["expiryTime"] == second.json["expiryTime"]
    # Jitter over half the backoff only: the retry never comes sooner than first_delay / 2.
    gap = (parse_instant(second.json["firedAt"]) - parse_instant(first.json["firedAt"])).total_seconds()
    assert gap >= first_delay / 2 - 0.002
    assert second.received_at - first.received_at >= first_delay / 2 - 0.01
    assert gap < first_delay + 0.5
    assert done.attempts == 2
    assert done.fired_at == parse_instant(second.json["firedAt"])
    assert done.last_error is None
    assert len(receiver.requests) == 2


def test_gives_up_after_the_last_attempt(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    receiver.respond("/down", *[500] * 10)
    store.insert(make_timer("t-down", now(), url=receiver.url("/down")))

    with running(settings_for(tmp_path, FAST, max_attempts=3, retry_first_delay="0.05"), CountingDeliverer):
        failed = wait_until(lambda: (t := store.get("t-down")) and t.status is Status.FAILED and t, timeout=8)
        # Nothing may follow the last attempt: give a stray fourth request a few polls to show up.
        with pytest.raises(AssertionError):
            receiver.wait_for(4, timeout=0.5)

    assert [r.json["attempt"] for r in receiver.requests] == [1, 2, 3]
    assert failed.attempts == 3
    assert failed.last_error is not None and "500" in failed.last_error
    assert failed.fired_at is None
    assert failed.lease_owner is None


def test_a_refused_connection_is_retried_then_fails(tmp_path: Path, store: SqliteStore) -> None:
    closed = Receiver()  # bind a free port, then close it so nothing listens there
    url = closed.url("/gone")
    closed.close()
    store.insert(make_timer("t-refused", now(), url=url))

    with running(settings_for(tmp_path, FAST, max_attempts=3, retry_first_delay="0.05"), CountingDeliverer):
        failed = wait_until(lambda: (t := store.get("t-refused")) and t.status is Status.FAILED and t, timeout=8)

    assert failed.attempts == 3
    assert failed.last_error is not None and "Connect" in failed.last_error


def test_overdue_timers_fire_at_start_oldest_first(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    start = now()
    # Ids deliberately not in expiry order, so only the expiry can explain the firing order.
    ages = {"t-c": 5, "t-a": 4, "t-e": 3, "t-b": 2, "t-d": 1}
    store.insert_many(
        [make_timer(tid, start - timedelta(seconds=s), url=receiver.url("/late")) for tid, s in ages.items()]
    )

    runner = Runner(
        settings_for(tmp_path, FAST, concurrency=1, per_host_concurrency=1), SqliteStore(str(tmp_path / "timers.db"))
    )
    try:
        assert runner.run(burst=True) == 0
    finally:
        runner.store.close()

    got = receiver.wait_for(5, timeout=1)
    assert [r.json["timerId"] for r in got] == sorted(ages, key=lambda tid: -ages[tid])
    assert all(parse_instant(r.json["firedAt"]) - start < timedelta(seconds=1) for r in got)
    assert all_in(store, list(ages), Status.FINISHED)
    assert len(receiver.requests) == 5


def test_burst_fires_what_is_due_and_leaves_the_rest(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    store.insert(make_timer("t-due", now(), url=receiver.url()))
    store.insert(make_timer("t-later", now() + timedelta(hours=1), url=receiver.url()))

    runner = Runner(settings_for(tmp_path, FAST), SqliteStore(str(tmp_path / "timers.db")))
    try:
        assert runner.run(burst=True) == 0
    finally:
        runner.store.close()

    assert [r.json["timerId"] for r in receiver.wait_for(1, timeout=1)] == ["t-due"]
    later = store.get("t-later")
    assert later is not None and later.status is Status.SCHEDULED and later.lease_owner is None
    assert statuses(store, ["t-due"]) == {"t-due": Status.FINISHED}


def test_a_delivery_longer_than_the_lease_is_not_fired_twice(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    receiver.hang("/slow", 3.0)
    store.insert(make_timer("t-slow", now(), url=receiver.url("/slow")))
    settings = settings_for(tmp_path, FAST, lease=1, poll_interval="0.05")

    owners: set[str | None] = set()

    def finished() -> Timer | None:
        timer = store.get("t-slow")
        assert timer is not None
        owners.add(timer.lease_owner)
        return timer if timer.status is Status.FINISHED else None

    with running(settings, CountingDeliverer) as first:
        wait_until(lambda: (t := store.get("t-slow")) and t.lease_owner == first.owner, timeout=5)
        with running(settings, CountingDeliverer) as second:
            done = wait_until(finished, timeout=8)

    assert started(first) == ["t-slow"]
    assert started(second) == []
    assert owners <= {first.owner, None}, "the lease never changed hands"
    assert [r.json["attempt"] for r in receiver.requests] == [1]
    assert done.attempts == 1


def test_a_lapsed_lease_does_not_make_a_runner_fire_its_own_delivery_again(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    receiver.hang("/slow", 2.5)
    store.insert(make_timer("t-lapsed", now(), url=receiver.url("/slow")))

    with running(settings_for(tmp_path, FAST, lease=1), CountingDeliverer, NoRenewRunner) as runner:
        done = wait_until(lambda: (t := store.get("t-lapsed")) and t.status is Status.FINISHED and t, timeout=8)

    # The lease ran out mid-delivery and the runner claimed the timer again, but it was already firing.
    assert started(runner) == ["t-lapsed"]
    assert done.attempts == 1
    assert len(receiver.wait_for(1, timeout=1)) == 1


class StalledWritesRunner(NoRenewRunner):
    """A runner whose outcome writes stall (as in a store locked for longer than the lease) until ``unstall``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unstall = threading.Event()

    def flush(self, timeout: float = 0.0, linger: float = 0.0) -> int:
        if not self.unstall.is_set():
            self.unstall.wait(timeout)
            return 0
        return super().flush(timeout, linger)


def test_a_lapsed_lease_does_not_make_a_runner_fire_a_delivery_awaiting_its_write_again(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    store.insert(make_timer("t-unwritten", now(), url=receiver.url()))

    with running(settings_for(tmp_path, FAST, lease=1), CountingDeliverer, StalledWritesRunner) as runner:
        assert isinstance(runner, StalledWritesRunner)
        receiver.wait_for(1, timeout=5)
        leases: set[datetime] = set()

        def claimed_again() -> bool:
            timer = store.get("t-unwritten")
            if timer is not None and timer.lease_until is not None:
                leases.add(timer.lease_until)
            return len(leases) >= 3

        # Delivered, its outcome not written: the lease lapses and the runner's own claim takes it again,
        # twice (renewals are off, so each new lease is a new claim; by the third, the loop has long seen
        # the second).
        wait_until(claimed_again, timeout=8, message="two re-claims of the delivered timer")
        runner.unstall.set()
        done = wait_until(lambda: (t := store.get("t-unwritten")) and t.status is Status.FINISHED and t, timeout=5)

    assert started(runner) == ["t-unwritten"]
    assert done.attempts == 1
    assert len(receiver.requests) == 1


def test_stop_releases_unstarted_claims_and_waits_for_inflight(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    receiver.hang("/slow", 1.0)
    store.insert(make_timer("t-inflight", now(), url=receiver.url("/slow")))
    store.insert(make_timer("t-ahead", now() + timedelta(seconds=20), url=receiver.url("/ahead")))
    with running(settings_for(tmp_path, FAST, lookahead=30), CountingDeliverer) as runner:
        wait_until(lambda: all_held(store, ["t-inflight", "t-ahead"]), timeout=5)
        wait_until(lambda: started(runner) == ["t-inflight"], timeout=5, message="the delivery to start")
        assert receiver.requests == []

    assert [r.path for r in receiver.requests] == ["/slow"]
    assert statuses(store, ["t-inflight", "t-ahead"]) == {"t-inflight": Status.FINISHED, "t-ahead": Status.SCHEDULED}
    ahead = store.get("t-ahead")
    assert ahead is not None and ahead.lease_owner is None and ahead.attempts == 0


class WhenDeliverer(CountingDeliverer):
    """Notes, for each POST as it starts, the instant it was due and the instant it started."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.when: list[tuple[datetime, datetime]] = []

    async def deliver(self, timer: Timer, attempt: int, fired_at: datetime) -> Attempt:
        self.when.append((timer.due_at, datetime.now(UTC)))
        return await super().deliver(timer, attempt, fired_at)


def test_no_timer_is_posted_before_its_instant(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    """The firing loop's timers have millisecond resolution (uvloop) and can wake a little early."""
    settings = settings_for(tmp_path, FAST)
    first = now().replace(microsecond=0) + timedelta(seconds=2)
    ids = [f"ms-{i:03d}" for i in range(300)]
    store.insert_many(
        [
            make_timer(tid, first + timedelta(milliseconds=3 * i + i % 3), url=receiver.url("/ms"))
            for i, tid in enumerate(ids)
        ]
    )
    deliverer = WhenDeliverer(settings)
    with running(settings, deliverer):
        wait_until(lambda: all_in(store, ids, Status.FINISHED), timeout=20, message="all 300 finished")
    early = [(due, at) for due, at in deliverer.when if at < due]
    assert len(deliverer.when) == 300 and not early, early[:5]


def test_an_injected_clock_decides_what_is_due_and_what_firedat_says(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    """``run(burst=True)`` with a ManualClock fires exactly what is due at the clock's now: no real waiting."""
    start = now().replace(microsecond=0) + timedelta(days=1)  # far from the wall clock: only the injected one counts
    clock = ManualClock(start)
    store.insert(make_timer("t-at-60", start + timedelta(seconds=60), url=receiver.url()))
    store.insert(make_timer("t-at-90", start + timedelta(seconds=90), url=receiver.url()))

    def burst() -> None:
        runner = Runner(settings_for(tmp_path, FAST), SqliteStore(str(tmp_path / "timers.db")), clock=clock)
        try:
            assert runner.run(burst=True) == 0
        finally:
            runner.store.close()

    burst()
    assert receiver.requests == []
    assert statuses(store, ["t-at-60", "t-at-90"]) == {"t-at-60": Status.SCHEDULED, "t-at-90": Status.SCHEDULED}

    clock.advance(timedelta(seconds=60))
    burst()
    (got,) = receiver.wait_for(1, timeout=5)
    assert got.json["timerId"] == "t-at-60"
    assert parse_instant(got.json["firedAt"]) == start + timedelta(seconds=60)
    done = store.get("t-at-60")
    assert done is not None and done.status is Status.FINISHED and done.fired_at == start + timedelta(seconds=60)
    assert statuses(store, ["t-at-90"]) == {"t-at-90": Status.SCHEDULED}


class LostAnswerStore(SqliteStore):
    """A store whose first claim is written but whose answer is lost, as when the connection breaks."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.lost: list[str] = []

    def claim_due(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        claimed = super().claim_due(owner, now, until, lease_until, limit)
        if claimed and not self.lost:
            self.lost = [t.timer_id for t in claimed]
            raise BackendUnavailable("connection reset after the claim was written")
        return claimed


def test_a_claim_whose_answer_was_lost_is_handed_back_and_fired(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    """Renewal names every lease the runner holds in the store; one it never heard of is released, not kept."""
    store.insert(make_timer("t-orphan", now(), url=receiver.url()))
    settings = settings_for(tmp_path, FAST, lease=4)
    runner = Runner(settings, LostAnswerStore(settings.db_path), deliverer=CountingDeliverer(settings))
    stop = StopFlag()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # Well before the 4 s lease would lapse: the first renewal (after 1 s) hands it back.
        done = wait_until(lambda: (t := store.get("t-orphan")) and t.status is Status.FINISHED and t, timeout=3.5)
    finally:
        stop.request()
        thread.join(timeout=15)
        runner.store.close()
    assert isinstance(runner.store, LostAnswerStore) and runner.store.lost == ["t-orphan"]
    assert done.attempts == 1 and len(receiver.requests) == 1

"""How delivery slots are shared between hosts (``slots.py``): ``HostSlots`` alone, then as a runner's POSTs see it.

``HostSlots`` alone is pure asyncio, no network: each scenario runs in its own event loop; ``settle`` lets
every task that can run do so (no clock involved). Then targets that hang, answer slowly or refuse
connections, next to a healthy receiver whose timers must stay on time: each bad target a host of its
own (an address of 127.0.0.0/8 of its own, or a host name pinned by an injected resolver to 127.0.0.1, as
names behind a shared ingress address are in production). The bad timers fall due just before the healthy
ones, so they hold every slot they can get first.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.factories import FAST, NO_RETRY_SOON, make_timer, now, process_env, settings_for, spread, tried
from tests.fixtures_daemons import RunnerProcess, running
from tests.fixtures_http import FakeDns, Received, Receiver, lateness, roomy, wait_until
from tests.hostile_servers import RawServer
from timerctl.config import Settings
from timerctl.daemons.runner import make_deliverer
from timerctl.delivery import Deliverer
from timerctl.model import Status, Timer
from timerctl.slots import HostShare, HostSlots
from timerctl.stores.sqlite import SqliteStore
from timerctl.targets import TargetGuard


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_window_grows_by_one_per_answer_up_to_per_host_and_halves_per_failure_down_to_one() -> None:
    async def scenario() -> tuple[list[int], list[int], int]:
        slots = HostSlots(total=256, per_host=8, initial=4)
        grown, shrunk = [], []
        for _ in range(6):
            slots.release(await slots.acquire("a.example"), True)
            grown.append(slots.window("a.example"))
        for _ in range(5):
            slots.release(await slots.acquire("a.example"), False)
            shrunk.append(slots.window("a.example"))
        slots.release(await slots.acquire("a.example"), None)  # neither: a refusal, a malformed answer
        return grown, shrunk, slots.window("a.example")

    assert asyncio.run(scenario()) == ([5, 6, 7, 8, 8, 8], [4, 2, 1, 1, 1], 1)


def test_posts_held_by_a_full_window_start_in_order_as_soon_as_a_slot_frees() -> None:
    async def scenario() -> tuple[list[int], list[int], int]:
        slots = HostSlots(total=256, per_host=32, initial=2)
        first = [await slots.acquire("h") for _ in range(2)]
        started: list[int] = []

        async def post(i: int) -> HostShare:
            share = await slots.acquire("h")
            started.append(i)
            return share

        tasks = [asyncio.create_task(post(i)) for i in range(3)]
        await settle()
        before = list(started)
        slots.release(first[0], False)  # a timeout: the window halves to 1, one still in flight
        await settle()
        slots.release(first[1], False)
        await settle()
        after_two = list(started)
        slots.release(await tasks[0], True)  # answered: window 2, so both waiting POSTs start
        await asyncio.gather(*tasks)
        return before, after_two, len(started)

    assert asyncio.run(scenario()) == ([], [0], 3)


def test_when_every_slot_is_taken_the_next_free_one_goes_to_the_host_with_fewest_in_flight() -> None:
    async def scenario() -> tuple[bool, bool]:
        slots = HostSlots(total=4, per_host=4, initial=4)
        busy = [await slots.acquire("busy") for _ in range(3)]
        await slots.acquire("calm")
        more_busy = asyncio.create_task(slots.acquire("busy"))  # asked first
        more_calm = asyncio.create_task(slots.acquire("calm"))
        await settle()
        slots.release(busy[0], True)
        await settle()
        calm_first = more_calm.done() and not more_busy.done()
        slots.release(busy[1], True)
        await settle()
        return calm_first, more_busy.done()

    assert asyncio.run(scenario()) == (True, True)


def test_the_last_eighth_of_the_slots_is_kept_for_hosts_with_nothing_in_flight() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        slots = HostSlots(total=16, per_host=16, initial=16)
        for _ in range(14):
            await slots.acquire("hanging")
        hanging_more = asyncio.create_task(slots.acquire("hanging"))
        await settle()
        await slots.acquire("healthy")  # its first request may use the reserve
        healthy_more = asyncio.create_task(slots.acquire("healthy"))  # its second may not
        await settle()
        return slots.in_flight, hanging_more.done(), healthy_more.done()

    assert asyncio.run(scenario()) == (15, False, False)


def test_a_cancelled_wait_takes_no_slot_and_a_slot_granted_as_it_was_cancelled_is_handed_on() -> None:
    async def scenario() -> tuple[int, bool, int]:
        slots = HostSlots(total=1, per_host=1, initial=1)
        holder = await slots.acquire("h")
        gone = asyncio.create_task(slots.acquire("h"))
        granted_then_cancelled = asyncio.create_task(slots.acquire("h"))
        last = asyncio.create_task(slots.acquire("h"))
        await settle()
        gone.cancel()
        await settle()
        slots.release(holder, None)  # granted to the second waiter, which is cancelled before it runs
        granted_then_cancelled.cancel()
        await settle()
        share = await last
        in_flight = slots.in_flight
        slots.release(share, None)
        return in_flight, granted_then_cancelled.cancelled(), slots.in_flight

    assert asyncio.run(scenario()) == (1, True, 0)


# --- the runner's view: hosts that never answer -----------------------------------------------------------


def p99(values: list[float]) -> float:
    return sorted(values)[math.ceil(0.99 * len(values)) - 1]


def test_hosts_that_never_answer_do_not_delay_a_healthy_host(
    tmp_path: Path,
    store: SqliteStore,
    receiver: Receiver,
    servers: Callable[..., RawServer],
    spawn: Callable[..., RunnerProcess],
) -> None:
    """Ten hosts x 32 timers that hang (more than the 256 overall slots), next to a healthy host."""
    roomy(receiver)
    silent = [servers(host=f"127.0.0.{i}") for i in range(2, 12)]
    # The hanging requests must really hang for the whole test: a timeout far beyond it.
    spawn(process_env(tmp_path, FAST, NO_RETRY_SOON, request_timeout=60, connect_timeout=10)).wait_ready()
    start = now() + timedelta(seconds=2.5)
    hanging = [
        make_timer(f"hang-{h}-{i:02d}", start - timedelta(milliseconds=200), url=server.url())
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
    settings = settings_for(tmp_path, FAST, NO_RETRY_SOON, request_timeout=timeout, connect_timeout=1)
    ids = [f"hang-{i}" for i in range(6)]
    store.insert_many([make_timer(tid, now(), url=silent.url()) for tid in ids])

    with running(settings):
        timers = wait_until(lambda: tried(store, ids), timeout=4 * timeout + 5, message="every first attempt")
    accepted = list(silent.accepted)

    for timer in timers:
        assert timer.status is Status.RETRYING and timer.last_error == "timeout" and timer.attempts == 1, timer
        assert timer.due_at > now() + timedelta(seconds=20), "retried per policy, after its backoff"
    # Four at once (the initial window); after they timed out the window is 1: one at a time, each
    # started as soon as the one before gave its slot back.
    assert len(accepted) == 6
    assert accepted[3] - accepted[0] < 0.5
    assert timeout - 0.2 < accepted[4] - accepted[0] < timeout + 0.6
    assert timeout - 0.2 < accepted[5] - accepted[4] < timeout + 0.6


# --- the runner's view: a slow, a silent and a refusing host next to a healthy one ------------------------

#: The healthy timers of each test: each must arrive this soon after its expiry (they take milliseconds alone).
HEALTHY = 20
ON_TIME = 1.0
#: Small bounds, so the bad host can fill its share; a short drain: teardown cancels what is stuck on it.
ISOLATION: dict[str, object] = {"per_host_concurrency": 4, "concurrency": 8, "drain_timeout": "0.5"}


def resolving_to_loopback(settings: Settings, *names: str) -> Deliverer:
    """The deliverer ``serve`` builds, with ``names`` resolving to 127.0.0.1."""
    deliverer = make_deliverer(settings)
    assert isinstance(deliverer.guard, TargetGuard)
    deliverer.guard.resolver = FakeDns({name: ["127.0.0.1"] for name in names})
    return deliverer


def insert(store: SqliteStore, prefix: str, url: str, count: int, expiry: datetime) -> None:
    store.insert_many([make_timer(f"{prefix}-{i:02d}", expiry, url=url) for i in range(count)])


def assert_on_time(got: list[Received], expiry: datetime) -> None:
    late = sorted(round(r.received_at - expiry.timestamp(), 3) for r in got)
    assert len(got) == HEALTHY
    assert late[-1] < ON_TIME, f"healthy deliveries late by {late}"


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: every connection to it is refused, and nobody else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_saturated_slow_host_does_not_delay_other_hosts(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    hang = 4.0
    receiver.hang("/slow", hang)
    settings = settings_for(tmp_path, FAST, ISOLATION, request_timeout=10)
    expiry = now() + timedelta(seconds=1)
    # Same server, same address and port: only the host name tells the slow target from the healthy one.
    insert(store, "slow", f"http://slow.example:{receiver.port}/slow", 40, expiry - timedelta(milliseconds=200))
    insert(store, "fast", receiver.url("/fast"), HEALTHY, expiry)

    with running(settings, resolving_to_loopback(settings, "slow.example")):
        fast = receiver.wait_for(HEALTHY, timeout=5, path="/fast")
        assert_on_time(fast, expiry)
        assert [r for r in receiver.requests if r.path == "/slow"] == [], "/slow was still busy when /fast arrived"
        # The slow host gets at most per_host_concurrency at a time: one wave of 4 completes, not all 40.
        first_wave = receiver.wait_for(4, timeout=hang + 3, path="/slow")
        wave_end = max(r.received_at for r in first_wave)
        assert wave_end - (expiry.timestamp() - 0.2) >= hang - 0.1
        with pytest.raises(AssertionError):
            receiver.wait_for(5, timeout=0.5, path="/slow")

    assert all(r.headers["host"] == f"slow.example:{receiver.port}" for r in first_wave)


def silent_timers(store: SqliteStore) -> list[Timer]:
    return [t for t in store.find(limit=1000) if t.timer_id.startswith("silent-")]


def test_a_host_that_never_answers_does_not_delay_other_hosts(
    tmp_path: Path, store: SqliteStore, receiver: Receiver, servers: Callable[..., RawServer]
) -> None:
    silent = servers()  # accepts connections and never answers
    timeout = 1.5
    settings = settings_for(tmp_path, FAST, ISOLATION, request_timeout=timeout, connect_timeout=1)
    expiry = now() + timedelta(seconds=1)
    insert(store, "silent", f"http://silent.example:{silent.port}/hook", 40, expiry - timedelta(milliseconds=200))
    insert(store, "fast", receiver.url("/fast"), HEALTHY, expiry)

    with running(settings, resolving_to_loopback(settings, "silent.example")):
        assert_on_time(receiver.wait_for(HEALTHY, timeout=5, path="/fast"), expiry)
        # Each hung request is cut off at the request timeout and retried later, not left hanging.
        # Whichever of the silent timers got a slot first (timers due at one instant have no order).
        timed_out = wait_until(
            lambda: next((t for t in silent_timers(store) if t.last_error == "timeout"), None), timeout=timeout + 3
        )
        accepted = list(silent.accepted)

    assert timed_out.attempts >= 1 and timed_out.status is not Status.FAILED, "a timeout is retried"
    first = accepted[0]
    assert len([t for t in accepted if t - first < timeout - 0.3]) == 4, "per-host bound on the silent host"


def test_a_host_that_refuses_connections_does_not_delay_other_hosts(
    tmp_path: Path, store: SqliteStore, receiver: Receiver, refusing_port: int
) -> None:
    settings = settings_for(tmp_path, FAST, ISOLATION, retry_first_delay="0.05")
    expiry = now() + timedelta(seconds=1)
    insert(store, "refused", f"http://refused.example:{refusing_port}/hook", 40, expiry - timedelta(milliseconds=200))
    insert(store, "fast", receiver.url("/fast"), HEALTHY, expiry)

    with running(settings, resolving_to_loopback(settings, "refused.example")):
        assert_on_time(receiver.wait_for(HEALTHY, timeout=5, path="/fast"), expiry)
        refused = wait_until(lambda: (t := store.get("refused-39")) and t.last_error and t, timeout=5)

    assert "Connect" in (refused.last_error or "")
    fast = [store.get(f"fast-{i:02d}") for i in range(HEALTHY)]
    assert all(t is not None and t.status is Status.FINISHED and t.attempts == 1 for t in fast)

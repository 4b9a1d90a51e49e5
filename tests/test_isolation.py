"""Isolation: a target that hangs, answers slowly or refuses connections does not delay other timers.

Each bad target is a different host name pinned by an injected resolver to a local server (a name
behind a shared ingress address, as in production); the healthy target is the receiver at 127.0.0.1.
The bad timers fall due just before the healthy ones, so they hold every slot they can get first.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures_http import Received, Receiver, wait_until
from tests.test_runner import make_timer, now, settings_for
from tests.test_signing import serving
from tests.test_targets import FakeDns
from timerctl.config import Settings
from timerctl.daemons.runner import make_deliverer
from timerctl.delivery import Deliverer
from timerctl.model import Status
from timerctl.stores.sqlite import SqliteStore
from timerctl.targets import TargetGuard

FAST = 20
#: The healthy deliveries must each arrive this soon after their expiry (they take milliseconds alone).
ON_TIME = 1.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db = SqliteStore(str(tmp_path / "timers.db"))
    yield db
    db.close()


def resolving_to_loopback(settings: Settings, *names: str) -> Deliverer:
    """The deliverer ``serve`` builds, with ``names`` resolving to 127.0.0.1."""
    deliverer = make_deliverer(settings)
    assert isinstance(deliverer.guard, TargetGuard)
    deliverer.guard.resolver = FakeDns({name: ["127.0.0.1"] for name in names})
    return deliverer


def isolation_settings(tmp_path: Path, **overrides: object) -> Settings:
    # A short drain: teardown cancels the deliveries still stuck on the bad targets.
    return settings_for(tmp_path, per_host_concurrency=4, concurrency=8, drain_timeout="0.5", **overrides)


def insert(store: SqliteStore, prefix: str, url: str, count: int, expiry: datetime) -> None:
    store.insert_many([make_timer(f"{prefix}-{i:02d}", url, expiry) for i in range(count)])


def assert_on_time(got: list[Received], expiry: datetime) -> None:
    late = sorted(round(r.received_at - expiry.timestamp(), 3) for r in got)
    assert len(got) == FAST
    assert late[-1] < ON_TIME, f"healthy deliveries late by {late}"


class Silent:
    """A TCP server that accepts connections and never answers: a target that hangs mid-request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[float] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(time.time())
            self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


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
    settings = isolation_settings(tmp_path, request_timeout=10)
    expiry = now() + timedelta(seconds=1)
    # Same server, same address and port: only the host name tells the slow target from the healthy one.
    insert(store, "slow", f"http://slow.example:{receiver.port}/slow", 40, expiry - timedelta(milliseconds=200))
    insert(store, "fast", receiver.url("/fast"), FAST, expiry)

    with serving(settings, resolving_to_loopback(settings, "slow.example")):
        fast = receiver.wait_for(FAST, timeout=5, path="/fast")
        assert_on_time(fast, expiry)
        assert [r for r in receiver.requests if r.path == "/slow"] == [], "/slow was still busy when /fast arrived"
        # The slow host gets at most per_host_concurrency at a time: one wave of 4 completes, not all 40.
        first_wave = receiver.wait_for(4, timeout=hang + 3, path="/slow")
        wave_end = max(r.received_at for r in first_wave)
        assert wave_end - (expiry.timestamp() - 0.2) >= hang - 0.1
        with pytest.raises(AssertionError):
            receiver.wait_for(5, timeout=0.5, path="/slow")

    assert all(r.headers["host"] == f"slow.example:{receiver.port}" for r in first_wave)


def test_a_host_that_never_answers_does_not_delay_other_hosts(
    tmp_path: Path, store: SqliteStore, receiver: Receiver, silent: Silent
) -> None:
    timeout = 1.5
    settings = isolation_settings(tmp_path, request_timeout=timeout, connect_timeout=1)
    expiry = now() + timedelta(seconds=1)
    insert(store, "silent", f"http://silent.example:{silent.port}/hook", 40, expiry - timedelta(milliseconds=200))
    insert(store, "fast", receiver.url("/fast"), FAST, expiry)

    with serving(settings, resolving_to_loopback(settings, "silent.example")):
        assert_on_time(receiver.wait_for(FAST, timeout=5, path="/fast"), expiry)
        # Each hung request is cut off at the request timeout and retried later, not left hanging.
        timed_out = wait_until(
            lambda: (t := store.get("silent-00")) and t.last_error == "timeout" and t, timeout=timeout + 3
        )
        accepted = list(silent.accepted)

    assert timed_out.attempts >= 1 and timed_out.status is not Status.FAILED, "a timeout is retried"
    first = accepted[0]
    assert len([t for t in accepted if t - first < timeout - 0.3]) == 4, "per-host bound on the silent host"


def test_a_host_that_refuses_connections_does_not_delay_other_hosts(
    tmp_path: Path, store: SqliteStore, receiver: Receiver, refusing_port: int
) -> None:
    settings = isolation_settings(tmp_path, retry_first_delay="0.05")
    expiry = now() + timedelta(seconds=1)
    insert(store, "refused", f"http://refused.example:{refusing_port}/hook", 40, expiry - timedelta(milliseconds=200))
    insert(store, "fast", receiver.url("/fast"), FAST, expiry)

    with serving(settings, resolving_to_loopback(settings, "refused.example")):
        assert_on_time(receiver.wait_for(FAST, timeout=5, path="/fast"), expiry)
        refused = wait_until(lambda: (t := store.get("refused-39")) and t.last_error and t, timeout=5)

    assert "Connect" in (refused.last_error or "")
    fast = [store.get(f"fast-{i:02d}") for i in range(FAST)]
    assert all(t is not None and t.status is Status.FINISHED and t.attempts == 1 for t in fast)

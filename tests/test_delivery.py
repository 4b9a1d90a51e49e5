"""The webhook POST (``delivery.py``): signing, bounded reads of hostile answers, errors that keep the URL's
secrets, every failure a recorded attempt, redirects never followed.

Deliveries come from a runner built the way ``timerctl serve runner`` builds it (signer and target guard from
settings), in-process over a SQLite file (``running``), or as a ``timerctl serve runner`` process where memory
is measured (VmHWM of the process). They are checked as the real ``receiver`` got them: body bytes and
headers; signatures by an implementation of the Standard Webhooks spec written here
(``tests/standard_webhooks.py``), not by the library. Hostile receivers are real sockets on loopback
(``tests/hostile_servers.py``). How slots are shared between hosts is in ``test_slots.py``; the body and
headers of an ordinary delivery in ``test_runner.py``.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.factories import FAST, NO_RETRY_SOON, make_timer, now, process_env, settings_for, settled, spread, tried
from tests.fixtures_daemons import RunnerProcess, running
from tests.fixtures_http import Received, Receiver, lateness, roomy, wait_until
from tests.hostile_servers import RawServer, echoed_status_line, huge_body, oversized_headers, vm_hwm_mb
from tests.standard_webhooks import PREVIOUS, SECRET, spec_signature
from timerctl.config import Settings
from timerctl.daemons.runner import make_deliverer
from timerctl.delivery import Attempt, Deliverer, Signer
from timerctl.logs import JsonFormatter
from timerctl.model import Status, Timer, parse_instant
from timerctl.stores.sqlite import SqliteStore

#: Junk each huge-body receiver sends at most: enough that a runner buffering it shows (twice this, as
#: aiohttp joins the chunks it read), little enough that the old code's failure does not hurt a shared machine.
JUNK_CAP = 160 << 20
#: The documented bound on a runner's peak RSS while a receiver answers 1 GiB.
PEAK_RSS_MB = 200


def valid_for(secret: str, got: Received) -> list[bool]:
    """For each space-separated signature of a delivery: whether ``secret`` produced it."""
    expected = spec_signature(secret, got.headers["webhook-id"], got.headers["webhook-timestamp"], got.body)
    return [hmac.compare_digest(sig, expected) for sig in got.headers["webhook-signature"].split(" ")]


# --- signing --------------------------------------------------------------------------------------------------


def test_the_checker_reproduces_the_specs_published_test_vector() -> None:
    # From the Standard Webhooks specification; every implementation's test suite carries it.
    signature = spec_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_delivery_is_signed_over_the_exact_body_bytes(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    payload = {"order": 7, "name": "café ☕", "nested": {"ok": True}}
    store.insert(make_timer("t-signed", now(), url=receiver.url("/signed"), payload=payload))

    with running(settings_for(tmp_path, FAST, signing_secret=SECRET)):
        (got,) = receiver.wait_for(1, timeout=5)
        settled(store, "t-signed", Status.FINISHED)

    assert got.json["payload"] == payload
    assert got.headers["webhook-id"] == "t-signed" == got.json["timerId"]
    timestamp = got.headers["webhook-timestamp"]
    assert timestamp.isdigit()
    assert abs(int(timestamp) - time.time()) < 5
    assert int(timestamp) == int(parse_instant(got.json["firedAt"]).timestamp())
    assert valid_for(SECRET, got) == [True]
    assert valid_for(PREVIOUS, got) == [False]
    # The check is not vacuous: one changed byte of the body, or another id, no longer matches.
    tampered = Received(got.path, got.headers, got.body.replace(b"7", b"8", 1), got.received_at)
    assert valid_for(SECRET, tampered) == [False]
    other_id = Received(got.path, {**got.headers, "webhook-id": "t-other"}, got.body, got.received_at)
    assert valid_for(SECRET, other_id) == [False]


def test_during_rotation_each_secret_has_its_own_signature(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    store.insert(make_timer("t-rotate", now(), url=receiver.url("/rotate"), payload={"n": 1}))

    with running(settings_for(tmp_path, FAST, signing_secret=SECRET, signing_secret_previous=PREVIOUS)):
        (got,) = receiver.wait_for(1, timeout=5)
        settled(store, "t-rotate", Status.FINISHED)

    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert sorted(valid_for(SECRET, got)) == [False, True]
    assert sorted(valid_for(PREVIOUS, got)) == [False, True]
    assert valid_for(SECRET, got) != valid_for(PREVIOUS, got), "each signature matches exactly one secret"


def test_a_retry_keeps_the_webhook_id_and_is_signed_afresh(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    receiver.respond("/retry", 500)
    store.insert(make_timer("t-retry", now(), url=receiver.url("/retry")))

    with running(settings_for(tmp_path, FAST, signing_secret=SECRET)):
        first, second = receiver.wait_for(2, timeout=5)
        done = settled(store, "t-retry", Status.FINISHED)

    assert done.attempts == 2
    assert [r.json["attempt"] for r in (first, second)] == [1, 2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "t-retry"
    assert first.body != second.body
    assert valid_for(SECRET, first) == [True]
    assert valid_for(SECRET, second) == [True]
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]


def test_without_a_secret_there_is_no_signature_but_id_and_timestamp_remain(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    store.insert(make_timer("t-plain", now(), url=receiver.url("/plain")))

    with running(settings_for(tmp_path, FAST)):
        (got,) = receiver.wait_for(1, timeout=5)
        settled(store, "t-plain", Status.FINISHED)

    assert "webhook-signature" not in got.headers
    assert got.headers["webhook-id"] == "t-plain"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5


# --- answers read within bounds -----------------------------------------------------------------------------


def test_a_gigabyte_response_is_not_read_and_other_timers_stay_on_time(
    tmp_path: Path,
    store: SqliteStore,
    receiver: Receiver,
    servers: Callable[..., RawServer],
    spawn: Callable[..., RunnerProcess],
) -> None:
    """A 2xx with a huge body is delivered (the status decides); only its first 512 bytes are ever read."""
    roomy(receiver)
    sized = servers(huge_body(cap=JUNK_CAP), host="127.0.0.2")
    endless = servers(huge_body(chunked=True, cap=JUNK_CAP), host="127.0.0.3")
    runner = spawn(process_env(tmp_path, FAST, NO_RETRY_SOON, request_timeout=10))
    runner.wait_ready()
    baseline = vm_hwm_mb(runner.proc.pid)
    start = now() + timedelta(seconds=2.5)
    healthy = spread("ok", receiver.url("/ok"), start - timedelta(milliseconds=500), 60, 25)
    store.insert_many(
        [make_timer("sized", start, url=sized.url()), make_timer("endless", start, url=endless.url()), *healthy]
    )

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


# --- every failure an outcome, and no secret of the URL in it ------------------------------------------------


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
    settings = settings_for(tmp_path, FAST, max_attempts=2, retry_first_delay="0.05")
    store.insert(make_timer("t-broken", now(), url=receiver.url("/never")))

    with running(settings, broken(settings, what)) as runner:
        failed = settled(store, "t-broken", Status.FAILED)
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
    store.insert_many([make_timer(tid, now(), url=url) for tid, url in urls.items()])

    with running(settings_for(tmp_path, FAST, max_attempts=1)):
        failed = {tid: settled(store, tid, Status.FAILED) for tid in urls}

    assert "Bad status line" in (failed["t-status"].last_error or "")
    assert "Got more than 8190 bytes" in (failed["t-headers"].last_error or "")
    for timer in failed.values():
        assert "SECRET" not in (timer.last_error or "") and "PASSWORD" not in (timer.last_error or ""), timer
    lines = [JsonFormatter().format(record) for record in caplog.records]
    fired = [line for line in lines if '"event": "fired"' in line]
    assert len(fired) == 2 and all("127.0.0." in line for line in fired), fired
    assert [line for line in lines if "SECRET" in line or "PASSWORD" in line] == []


# --- redirects are not followed ------------------------------------------------------------------------------


def test_a_302_is_a_failed_attempt_that_is_retried(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    receiver.respond("/moved", 302)
    store.insert(make_timer("t-302", now(), url=receiver.url("/moved")))

    with running(settings_for(tmp_path, FAST)):
        done = settled(store, "t-302", Status.FINISHED)

    assert done.attempts == 2
    assert [r.path for r in receiver.requests] == ["/moved", "/moved"]


class Redirector:
    """An HTTP server answering every POST with a 302 to ``location``."""

    def __init__(self, location: str) -> None:
        self.hits = 0
        redirector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                redirector.hits += 1
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_redirect_with_a_location_is_not_followed(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    redirector = Redirector(receiver.url("/elsewhere"))
    store.insert(make_timer("t-redirect", now(), url=redirector.url))
    try:
        with running(settings_for(tmp_path, FAST, max_attempts=2, retry_first_delay="0.05")):
            failed = settled(store, "t-redirect", Status.FAILED)
    finally:
        redirector.close()

    assert failed.attempts == 2
    assert failed.last_error == "HTTP 302"
    assert redirector.hits == 2
    assert receiver.requests == []

"""Standard Webhooks signing, checked by an implementation of the spec written here, not by the library.

Deliveries come from an in-process runner built the way ``timerctl serve runner`` builds it (signer and
target guard from settings) and are checked as the real ``receiver`` got them: body bytes and headers.
``timerctl verify`` is checked against messages signed by that same independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures_http import Received, Receiver, wait_until
from tests.test_runner import make_timer, now, settings_for
from timerctl.cli import main
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag
from timerctl.daemons.runner import Runner
from timerctl.delivery import Deliverer
from timerctl.model import Status, Timer, parse_instant
from timerctl.stores.sqlite import SqliteStore

TIMERCTL = str(Path(sys.executable).parent / "timerctl")
SECRET = "whsec_" + base64.b64encode(b"the current secret, 32 bytes ok!").decode()
PREVIOUS = "whsec_" + base64.b64encode(b"the previous secret, before 2026").decode()


def spec_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` with the base64 key after ``whsec_``, per the spec."""
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def valid_for(secret: str, got: Received) -> list[bool]:
    """For each space-separated signature of a delivery: whether ``secret`` produced it."""
    expected = spec_signature(secret, got.headers["webhook-id"], got.headers["webhook-timestamp"], got.body)
    return [hmac.compare_digest(sig, expected) for sig in got.headers["webhook-signature"].split(" ")]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db = SqliteStore(str(tmp_path / "timers.db"))
    yield db
    db.close()


@contextmanager
def serving(settings: Settings, deliverer: Deliverer | None = None) -> Iterator[Runner]:
    """A daemon runner in a thread; without ``deliverer`` it signs and checks targets as ``serve`` does."""
    runner = Runner(settings, SqliteStore(settings.db_path), deliverer=deliverer)
    stop = StopFlag()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(runner.run(stop)), name="test-runner", daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.request()
        thread.join(timeout=15)
        runner.store.close()
        assert not thread.is_alive(), "runner did not stop within 15s"
    assert codes == [0]


def finished(store: SqliteStore, timer_id: str) -> Timer:
    found: Timer = wait_until(
        lambda: (t := store.get(timer_id)) and t.status is Status.FINISHED and t, timeout=8, message=f"{timer_id} done"
    )
    return found


def test_the_checker_reproduces_the_specs_published_test_vector() -> None:
    # From the Standard Webhooks specification; every implementation's test suite carries it.
    signature = spec_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_delivery_is_signed_over_the_exact_body_bytes(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    payload = {"order": 7, "name": "café ☕", "nested": {"ok": True}}
    store.insert(make_timer("t-signed", receiver.url("/signed"), now(), payload))

    with serving(settings_for(tmp_path, signing_secret=SECRET)):
        (got,) = receiver.wait_for(1, timeout=5)
        finished(store, "t-signed")

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
    store.insert(make_timer("t-rotate", receiver.url("/rotate"), now(), {"n": 1}))

    with serving(settings_for(tmp_path, signing_secret=SECRET, signing_secret_previous=PREVIOUS)):
        (got,) = receiver.wait_for(1, timeout=5)
        finished(store, "t-rotate")

    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert sorted(valid_for(SECRET, got)) == [False, True]
    assert sorted(valid_for(PREVIOUS, got)) == [False, True]
    assert valid_for(SECRET, got) != valid_for(PREVIOUS, got), "each signature matches exactly one secret"


def test_a_retry_keeps_the_webhook_id_and_is_signed_afresh(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    receiver.respond("/retry", 500)
    store.insert(make_timer("t-retry", receiver.url("/retry"), now()))

    with serving(settings_for(tmp_path, signing_secret=SECRET)):
        first, second = receiver.wait_for(2, timeout=5)
        done = finished(store, "t-retry")

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
    store.insert(make_timer("t-plain", receiver.url("/plain"), now()))

    with serving(settings_for(tmp_path)):
        (got,) = receiver.wait_for(1, timeout=5)
        finished(store, "t-plain")

    assert "webhook-signature" not in got.headers
    assert got.headers["webhook-id"] == "t-plain"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5


def test_timerctl_verify_accepts_a_real_delivery(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    store.insert(make_timer("t-verify", receiver.url("/verify"), now(), {"text": "grüße"}))
    with serving(settings_for(tmp_path, signing_secret=SECRET, signing_secret_previous=PREVIOUS)):
        (got,) = receiver.wait_for(1, timeout=5)
        finished(store, "t-verify")
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")

    for secret in (SECRET, PREVIOUS):
        args = ["verify", "--secret", secret, *(f"--header={n}: {got.headers[n]}" for n in names)]
        result = subprocess.run([TIMERCTL, *args], input=got.body, capture_output=True, timeout=30)
        assert (result.returncode, result.stdout.strip()) == (0, b"valid"), result.stderr


def message(secret: str = SECRET, body: bytes = b'{"timerId":"t-cli","attempt":1}') -> tuple[bytes, dict[str, str]]:
    """A fresh message signed by ``spec_signature``: the body and its three headers."""
    timestamp = str(int(time.time()))
    signature = spec_signature(secret, "t-cli", timestamp, body)
    return body, {"webhook-id": "t-cli", "webhook-timestamp": timestamp, "webhook-signature": signature}


def run_verify(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], body: bytes, *args: str
) -> tuple[int, str, str]:
    """``timerctl verify ARGS`` in-process with ``body`` on stdin: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["verify", *args])
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def header_args(headers: dict[str, str]) -> list[str]:
    return [arg for name, value in headers.items() for arg in ("--header", f"{name}: {value}")]


def test_verify_accepts_a_message_signed_per_the_spec(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body, headers = message()
    assert run_verify(monkeypatch, capsys, body, "--secret", SECRET, *header_args(headers)) == (0, "valid\n", "")
    # A second signature for another secret (rotation) does not get in the way.
    previous = message(PREVIOUS, body)[1]["webhook-signature"]
    rotated = {**headers, "webhook-signature": f"{previous} {headers['webhook-signature']}"}
    assert run_verify(monkeypatch, capsys, body, "--secret", SECRET, *header_args(rotated))[0] == 0


@pytest.mark.parametrize(
    "case",
    [
        "tampered body",
        "wrong secret",
        "another id",
        "old timestamp",
        "no webhook-signature",
        "no webhook-id",
        "no webhook-timestamp",
        "garbage signature",
    ],
)
def test_verify_rejects_with_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    body, headers = message()
    secret = SECRET
    if case == "tampered body":
        body = body.replace(b"1", b"2")
    elif case == "wrong secret":
        secret = PREVIOUS
    elif case == "another id":
        headers["webhook-id"] = "t-other"
    elif case == "old timestamp":
        old = str(int(time.time()) - 3600)
        headers["webhook-timestamp"] = old
        headers["webhook-signature"] = spec_signature(SECRET, "t-cli", old, body)
    elif case.startswith("no "):
        del headers[case.removeprefix("no ")]
    else:
        headers["webhook-signature"] = "v1,not base64!"

    code, out, err = run_verify(monkeypatch, capsys, body, "--secret", secret, *header_args(headers))

    assert (code, out) == (1, "")
    assert err.startswith("invalid:")


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--secret", SECRET, "--header", "webhook-id t-cli"], "--header"),
        (["--secret", SECRET, "--header", ": t-cli"], "--header"),
        (["--secret", "whsec_", "--header", "webhook-id: t-cli"], "--secret"),
        (["--secret", "whsec_a", "--header", "webhook-id: t-cli"], "--secret"),
        pytest.param(
            ["--secret", "whsec_c2VjcmV0-c2VjcmV0", "--header", "webhook-id: t-cli"],
            "--secret",
        ),
    ],
    ids=["header without colon", "header without name", "empty secret", "truncated secret", "secret not base64"],
)
def test_verify_rejects_malformed_options_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], hint: str
) -> None:
    code, out, err = run_verify(monkeypatch, capsys, b"{}", *args)

    assert (code, out) == (2, "")
    assert err.startswith("error:") and hint in err

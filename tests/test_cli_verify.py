"""``timerctl verify``: a receiver's check of a delivery's Standard Webhooks signature, and where its secret comes from.

Messages are signed by the spec implementation in ``tests/standard_webhooks.py``, not by the library the runner
and ``verify`` use, and a real delivery by a runner is checked too. The secret comes from exactly one source,
so it need not be typed on the command line: ``--secret`` or ``--secret-file`` (never both), else
``TIMERCTL_SIGNING_SECRET`` (then the config file), as the runner reads it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.factories import FAST, TIMERCTL, make_timer, now, settings_for, settled
from tests.fixtures_cli import Cli, Result
from tests.fixtures_daemons import running
from tests.fixtures_http import Receiver
from tests.standard_webhooks import PREVIOUS, SECRET, spec_signature
from timerctl.model import Status
from timerctl.stores.sqlite import SqliteStore


def message(secret: str = SECRET, body: bytes = b'{"timerId":"t-cli","attempt":1}') -> tuple[bytes, dict[str, str]]:
    """A fresh message signed by ``spec_signature``: the body and its three headers."""
    timestamp = str(int(time.time()))
    signature = spec_signature(secret, "t-cli", timestamp, body)
    return body, {"webhook-id": "t-cli", "webhook-timestamp": timestamp, "webhook-signature": signature}


def verify(cli: Cli, body: bytes, *args: str) -> Result:
    """``timerctl verify ARGS`` in-process with ``body`` on stdin."""
    return cli("verify", *args, stdin=body)


def header_args(headers: dict[str, str]) -> list[str]:
    return [arg for name, value in headers.items() for arg in ("--header", f"{name}: {value}")]


def secret_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "secret"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return str(path)


# --- checking a message -----------------------------------------------------------------------------------


def test_timerctl_verify_accepts_a_real_delivery(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    store.insert(make_timer("t-verify", now(), url=receiver.url("/verify"), payload={"text": "grüße"}))
    with running(settings_for(tmp_path, FAST, signing_secret=SECRET, signing_secret_previous=PREVIOUS)):
        (got,) = receiver.wait_for(1, timeout=5)
        settled(store, "t-verify", Status.FINISHED)
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")

    for secret in (SECRET, PREVIOUS):
        args = ["verify", "--secret", secret, *(f"--header={n}: {got.headers[n]}" for n in names)]
        result = subprocess.run([TIMERCTL, *args], input=got.body, capture_output=True, timeout=30)
        assert (result.returncode, result.stdout.strip()) == (0, b"valid"), result.stderr


def test_verify_accepts_a_message_signed_per_the_spec(cli: Cli) -> None:
    body, headers = message()
    assert verify(cli, body, "--secret", SECRET, *header_args(headers)) == (0, "valid\n", "")
    # A second signature for another secret (rotation) does not get in the way.
    previous = message(PREVIOUS, body)[1]["webhook-signature"]
    rotated = {**headers, "webhook-signature": f"{previous} {headers['webhook-signature']}"}
    assert verify(cli, body, "--secret", SECRET, *header_args(rotated))[0] == 0


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
def test_verify_rejects_with_exit_1(cli: Cli, case: str) -> None:
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

    code, out, err = verify(cli, body, "--secret", secret, *header_args(headers))

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
def test_verify_rejects_malformed_options_with_exit_2(cli: Cli, args: list[str], hint: str) -> None:
    code, out, err = verify(cli, b"{}", *args)

    assert (code, out) == (2, "")
    assert err.startswith("error:") and hint in err


# --- where the secret comes from -------------------------------------------------------------------------


def test_secret_from_a_file(tmp_path: Path, cli: Cli) -> None:
    body, headers = message()
    path = secret_file(tmp_path, SECRET + "\n")  # as an editor or `echo` leaves it
    assert verify(cli, body, "--secret-file", path, *header_args(headers)) == (0, "valid\n", "")
    wrong = secret_file(tmp_path, PREVIOUS)
    code, out, err = verify(cli, body, "--secret-file", wrong, *header_args(headers))
    assert (code, out) == (1, "") and err.startswith("invalid:")


def test_secret_from_the_environment(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    body, headers = message()
    monkeypatch.setenv("TIMERCTL_SIGNING_SECRET", SECRET)
    assert verify(cli, body, *header_args(headers)) == (0, "valid\n", "")


def test_secret_from_the_config_file(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    body, headers = message()
    (tmp_path / "c.toml").write_text(f'signing_secret = "{SECRET}"\n', encoding="utf-8")
    monkeypatch.setenv("TIMERCTL_CONFIG", str(tmp_path / "c.toml"))
    assert verify(cli, body, *header_args(headers)) == (0, "valid\n", "")


@pytest.mark.parametrize("flag", ["--secret", "--secret-file"])
def test_a_flag_wins_over_the_environment(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    body, headers = message()
    monkeypatch.setenv("TIMERCTL_SIGNING_SECRET", PREVIOUS)
    value = SECRET if flag == "--secret" else secret_file(tmp_path, SECRET)
    assert verify(cli, body, flag, value, *header_args(headers)) == (0, "valid\n", "")


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        pytest.param("none", "no signing secret: give --secret-file PATH, set TIMERCTL_SIGNING_SECRET", id="none"),
        pytest.param("both", "give --secret or --secret-file, not both", id="both"),
        pytest.param("missing-file", "cannot be read: No such file or directory", id="missing-file"),
        pytest.param("empty-file", "secret': signing secret is empty", id="empty-file"),
        pytest.param("bad-env", "TIMERCTL_SIGNING_SECRET: signing secret is not whsec_<base64>", id="bad-env"),
    ],
)
def test_a_missing_or_ambiguous_secret_is_one_line_and_exit_2(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, setup: str, fragment: str
) -> None:
    body, headers = message()
    args: list[str] = []
    if setup == "both":
        args = ["--secret", SECRET, "--secret-file", secret_file(tmp_path, SECRET)]
    elif setup == "missing-file":
        args = ["--secret-file", str(tmp_path / "absent")]
    elif setup == "empty-file":
        args = ["--secret-file", secret_file(tmp_path, "\n")]
    elif setup == "bad-env":
        monkeypatch.setenv("TIMERCTL_SIGNING_SECRET", "whsec_not base64!")
    code, out, err = verify(cli, body, *args, *header_args(headers))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err
    assert SECRET.removeprefix("whsec_") not in err

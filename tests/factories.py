"""What the tests make and read back: timers (``make_timer``, the one factory), settings and a daemon's
environment (``settings_for``, ``process_env``), ``timerctl`` runs, inputs at the limits and the JSON forms.

Free of pytest on purpose: ``tests/reliability/harness.py`` (and through it ``bench/chaos.py``) imports it.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.polling import wait_for
from timerctl.config import Settings, load_settings
from timerctl.model import Status, Timer, utc
from timerctl.stores.sqlite import SqliteStore

#: The installed console script of the interpreter running the tests.
TIMERCTL = str(Path(sys.executable).with_name("timerctl"))
#: Environment variables of a process run by systemd, never inherited by a daemon a test starts.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

# --- timers, and reading them back from a store -------------------------------------------------------------


def make_timer(
    timer_id: str = "t-1",
    expiry: datetime | None = None,
    *,
    url: str | None = None,
    created_at: datetime | None = None,
    now: datetime | None = None,
    **fields: Any,
) -> Timer:
    """A Scheduled timer as a client would have stored it; any other ``Timer`` field by its name in ``fields``.

    ``now`` (the clock when not given) is when it was made: ``expiry`` defaults to an hour after it and
    ``created_at`` to the earlier of it and ``expiry`` (a timer whose instant had passed was created late:
    a catch-up). ``url`` defaults to ``https://hooks.example.com/<timer_id>``. ``expiry`` and ``created_at``
    are kept in UTC milliseconds, as every store keeps them; ``expiry_time=`` in ``fields`` sets the field
    exactly as given (an instant in another offset, microseconds).
    """
    made = utc(now if now is not None else datetime.now(UTC))
    expiry = made + timedelta(hours=1) if expiry is None else utc(expiry)
    values: dict[str, Any] = {
        "webhook_url": url if url is not None else f"https://hooks.example.com/{timer_id}",
        "expiry_time": expiry,
        "created_at": min(made, expiry) if created_at is None else utc(created_at),
        **fields,
    }
    return Timer(timer_id, **values)


def now() -> datetime:
    """The wall clock, in UTC (what a runner's clock says)."""
    return datetime.now(UTC)


def spread(prefix: str, url: str, start: datetime, count: int, every_ms: int) -> list[Timer]:
    """``count`` timers ``prefix-000``... for ``url``, the first due at ``start``, the next ``every_ms`` later each."""
    return [
        make_timer(f"{prefix}-{i:03d}", start + timedelta(milliseconds=every_ms * i), url=url) for i in range(count)
    ]


def stored_timers(db: str | Path) -> list[Timer]:
    """Every timer of the SQLite store file ``db``, by expiry, through a connection of its own."""
    store = SqliteStore(str(db))
    try:
        return store.find(limit=10_000_000)
    finally:
        store.close()


def settled(store: SqliteStore, timer_id: str, status: Status, timeout: float = 8) -> Timer:
    """``timer_id`` once ``store`` holds it in ``status``; AssertionError after ``timeout`` seconds."""

    def in_status() -> Timer | None:
        timer = store.get(timer_id)
        return timer if timer is not None and timer.status is status else None

    found = wait_for(in_status, timeout, f"{timer_id} {status}")
    assert found is not None
    return found


def tried(store: SqliteStore, ids: list[str]) -> list[Timer] | None:
    """The timers ``ids`` once each has an attempt recorded, else None."""
    timers = [store.get(tid) for tid in ids]
    done = [t for t in timers if t is not None and t.attempts]
    return done if len(done) == len(ids) else None


def statuses(store: SqliteStore, ids: list[str]) -> dict[str, Status]:
    """The status of each of ``ids`` that ``store`` holds."""
    return {tid: t.status for tid in ids if (t := store.get(tid)) is not None}


def all_in(store: SqliteStore, ids: list[str], status: Status) -> bool:
    """Whether ``store`` holds every one of ``ids``, each in ``status``."""
    got = statuses(store, ids)
    return len(got) == len(ids) and all(s is status for s in got.values())


# --- settings and environments ---------------------------------------------------------------------------

#: Runner timings that make a test take a second or two: a short poll, lease and backoff, small timeouts.
FAST: dict[str, object] = {
    "poll_interval": "0.05",
    "lease": "5",
    "lookahead": "2",
    "retry_first_delay": "0.2",
    "retry_max_delay": "1",
    "max_attempts": "8",
    "request_timeout": "5",
    "connect_timeout": "2",
    "drain_timeout": "5",
}
#: No retry within a test: what the first attempt ended as stays in the store.
NO_RETRY_SOON: dict[str, object] = {"retry_first_delay": 60, "retry_max_delay": 60}


def settings_env(tmp_path: Path, *presets: Mapping[str, object], **values: object) -> dict[str, str]:
    """``TIMERCTL_*`` variables for the store ``tmp_path/timers.db`` and no config file, then each setting.

    Settings go by name (``lease=1``, ``redis_url=...``): first the ``presets`` (such as ``FAST``), then
    ``values``; a None or empty value is left out (the default then holds, as for an empty variable).
    """
    env = {"TIMERCTL_CONFIG": os.devnull, "TIMERCTL_DB": str(tmp_path / "timers.db")}
    for name, value in {k: v for preset in (*presets, values) for k, v in preset.items()}.items():
        if value is not None and value != "":
            env[f"TIMERCTL_{name.upper()}"] = str(value)
    return env


def settings_for(tmp_path: Path, *presets: Mapping[str, object], **values: object) -> Settings:
    """The Settings of ``settings_env(tmp_path, *presets, **values)``, read as every entry point reads them."""
    return load_settings(env=settings_env(tmp_path, *presets, **values))


def process_env(tmp_path: Path, *presets: Mapping[str, object], **values: object) -> dict[str, str]:
    """This process's environment without ``TIMERCTL_*`` or systemd variables, plus ``settings_env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TIMERCTL_") and k not in SYSTEMD_VARIABLES}
    return {**inherited, **settings_env(tmp_path, *presets, **values)}


def timerctl(
    env: Mapping[str, str], *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``timerctl ARGS`` as a subprocess with ``env``, ``stdin`` as its input (else nothing to read)."""
    return subprocess.run(
        [TIMERCTL, *args],
        env=env,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- inputs at the limits, and the public JSON form ------------------------------------------------------

#: The fields of a timer's public JSON form (``get``, ``list``, ``create --json``).
PUBLIC_KEYS = {
    "timerId",
    "webhookUrl",
    "expiryTime",
    "createdAt",
    "timerStatus",
    "timeLeft",
    "payload",
    "attempts",
    "firedAt",
    "lastError",
}
#: The documented bound on payload text read at all (``timerctl.model.MAX_PAYLOAD_TEXT_BYTES``), here on its own.
MAX_PAYLOAD_TEXT_BYTES = 1024 * 1024
#: An instant as the JSON form writes it: UTC, milliseconds, ``Z``.
INSTANT_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def api_token() -> str:
    """A new API token as ``api-token new`` makes them: ``tmr_`` and 32 random bytes, url-safe base64."""
    return "tmr_" + secrets.token_urlsafe(32)


def token_line(token: str, scope: str) -> str:
    """The tokens-file line accepting ``token`` with ``scope``, written by hand (the README's format)."""
    return f"{scope} sha256:{hashlib.sha256(token.encode()).hexdigest()}"


def url_of_length(n: int) -> str:
    """A valid webhook URL of exactly ``n`` characters."""
    base = "https://example.com/"
    return base + "a" * (n - len(base))


def json_string_of_bytes(n: int) -> str:
    """A JSON string literal whose encoded text is exactly ``n`` bytes."""
    return '"' + "a" * (n - 2) + '"'

"""Every setting is bounds-checked at start, from every source, naming its variable on one line (exit 2).

The settings table (``timerctl.config.OPTIONS``, one row per ``Settings`` field) is also what the README's
configuration table must say, row for row; ``tests/test_ops.py`` checks ``daemons/timerctl.env`` the same way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from timerctl import config
from timerctl.config import Settings, load_settings
from timerctl.model import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No TIMERCTL_* variables and an empty config folder."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def refused(env: dict[str, str], **flags: Any) -> str:
    with pytest.raises(InvalidInput) as info:
        load_settings(env, **flags)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- bounds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        # The values issue 11 found accepted: a runner looping for ever, every POST blocked, no lease.
        pytest.param("TIMERCTL_CLAIM_BATCH", "0", "1 to 100000", id="claim-batch-0"),
        pytest.param("TIMERCTL_CLAIM_BATCH", "100001", "1 to 100000", id="claim-batch-huge"),
        pytest.param("TIMERCTL_CONCURRENCY", "0", "1 to 100000", id="concurrency-0"),
        pytest.param("TIMERCTL_PER_HOST_CONCURRENCY", "0", "1 to 100000", id="per-host-0"),
        pytest.param("TIMERCTL_LEASE", "0", "1s to 1d", id="lease-0"),
        pytest.param("TIMERCTL_LEASE", "999ms", "1s to 1d", id="lease-under-1s"),
        pytest.param("TIMERCTL_LEASE", "2d", "1s to 1d", id="lease-2d"),
        pytest.param("TIMERCTL_POLL_INTERVAL", "0", "10ms to 1h", id="poll-0"),
        pytest.param("TIMERCTL_POLL_INTERVAL", "5ms", "10ms to 1h", id="poll-5ms"),
        pytest.param("TIMERCTL_LOOKAHEAD", "2h", "0s to 1h", id="lookahead-2h"),
        pytest.param("TIMERCTL_REQUEST_TIMEOUT", "0", "more than 0s, at most 1h", id="request-timeout-0"),
        pytest.param("TIMERCTL_CONNECT_TIMEOUT", "0s", "more than 0s, at most 1h", id="connect-timeout-0"),
        pytest.param("TIMERCTL_MAX_ATTEMPTS", "1001", "1 to 1000", id="attempts-1001"),
        pytest.param(
            "TIMERCTL_RETRY_FIRST_DELAY", "0", "more than 0s, at most TIMERCTL_RETRY_MAX_DELAY", id="first-delay-0"
        ),
        pytest.param("TIMERCTL_RETRY_MAX_DELAY", "0", "more than 0s, at most 30d", id="max-delay-0"),
        pytest.param("TIMERCTL_MAX_HORIZON", "0", "more than 0s, at most 36500d", id="horizon-0"),
        pytest.param("TIMERCTL_DRAIN_TIMEOUT", "2h", "0s to 1h", id="drain-2h"),
        pytest.param("TIMERCTL_CACHE_GRACE", "400d", "0s to 365d", id="grace-400d"),
        pytest.param("TIMERCTL_TOPIC", "my topic", "1-200 of A-Z a-z 0-9 . _ -", id="topic-space"),
        pytest.param("TIMERCTL_GROUP_PREFIX", "a/b", "1-200 of A-Z a-z 0-9 . _ -", id="group-slash"),
    ],
)
def test_out_of_bounds_environment_values_are_refused(
    env: dict[str, str], variable: str, value: str, accepted: str
) -> None:
    env[variable] = value
    message = refused(env)
    assert message.startswith(f"setting {variable}={value!r} ")
    assert message.endswith(f"expected {accepted}")


@pytest.mark.parametrize(
    ("variable", "value", "name", "expected"),
    [
        pytest.param("TIMERCTL_CLAIM_BATCH", "1", "claim_batch", 1, id="claim-batch-1"),
        pytest.param("TIMERCTL_CLAIM_BATCH", "100000", "claim_batch", 100_000, id="claim-batch-max"),
        pytest.param("TIMERCTL_LEASE", "1s", "lease", timedelta(seconds=1), id="lease-1s"),
        pytest.param("TIMERCTL_LEASE", "1d", "lease", timedelta(days=1), id="lease-1d"),
        pytest.param("TIMERCTL_POLL_INTERVAL", "10ms", "poll_interval", timedelta(milliseconds=10), id="poll-10ms"),
        pytest.param("TIMERCTL_LOOKAHEAD", "0", "lookahead", timedelta(0), id="lookahead-0"),
        pytest.param("TIMERCTL_DRAIN_TIMEOUT", "0s", "drain_timeout", timedelta(0), id="drain-0"),
        pytest.param("TIMERCTL_CACHE_GRACE", "0", "cache_grace", timedelta(0), id="grace-0"),
        pytest.param(
            "TIMERCTL_REQUEST_TIMEOUT", "1ms", "request_timeout", timedelta(milliseconds=1), id="request-timeout-1ms"
        ),
        pytest.param("TIMERCTL_MAX_HORIZON", "36500d", "max_horizon", timedelta(days=36500), id="horizon-100y"),
        pytest.param("TIMERCTL_TOPIC", "orders.v2_x-y", "topic", "orders.v2_x-y", id="topic-alphabet"),
    ],
)
def test_values_at_the_bounds_are_accepted(
    env: dict[str, str], variable: str, value: str, name: str, expected: Any
) -> None:
    env[variable] = value
    assert getattr(load_settings(env), name) == expected


def test_config_file_values_are_bounds_checked(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "c.toml").write_text("claim_batch = 0\n", encoding="utf-8")
    env["TIMERCTL_CONFIG"] = str(tmp_path / "c.toml")
    assert refused(env) == "setting TIMERCTL_CLAIM_BATCH=0 is out of range; expected 1 to 100000"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        pytest.param({"claim_batch": 0}, "setting TIMERCTL_CLAIM_BATCH=0 is out of range", id="int"),
        pytest.param({"lease": 0.0}, "setting TIMERCTL_LEASE=0.0 is out of range; expected 1s to 1d", id="float"),
        pytest.param({"poll_interval": "1ms"}, "setting TIMERCTL_POLL_INTERVAL='1ms' is out of range", id="text"),
        pytest.param({"concurrency": True}, "setting TIMERCTL_CONCURRENCY=True is invalid", id="bool-for-int"),
        pytest.param({"lease": float("nan")}, "setting TIMERCTL_LEASE=nan is invalid", id="nan"),
        pytest.param({"topic": ""}, "setting TIMERCTL_TOPIC='' is not accepted", id="empty-topic"),
    ],
)
def test_flags_go_through_the_same_validation(env: dict[str, str], flags: dict[str, Any], fragment: str) -> None:
    assert fragment in refused(env, **flags)


def test_flags_keep_their_precedence_and_type(env: dict[str, str]) -> None:
    env["TIMERCTL_LEASE"] = "20s"
    settings = load_settings(env, lease=45, db="/tmp/x.db", block_private_targets=True, claim_batch=None)
    assert settings.lease == timedelta(seconds=45)
    assert (settings.db, settings.block_private_targets) == ("/tmp/x.db", True)
    assert settings.claim_batch == Settings().claim_batch
    assert load_settings(env, lease=timedelta(minutes=2)).lease == timedelta(minutes=2)


def test_first_retry_delay_may_not_exceed_the_largest(env: dict[str, str]) -> None:
    env.update(TIMERCTL_RETRY_FIRST_DELAY="10m", TIMERCTL_RETRY_MAX_DELAY="5m")
    assert refused(env) == (
        "setting TIMERCTL_RETRY_FIRST_DELAY=10m is above TIMERCTL_RETRY_MAX_DELAY=5m; "
        "expected at most TIMERCTL_RETRY_MAX_DELAY"
    )
    env["TIMERCTL_RETRY_MAX_DELAY"] = "10m"
    assert load_settings(env).retry_first_delay == timedelta(minutes=10)


# --- the table -------------------------------------------------------------------------------------


def test_every_field_has_a_row_of_its_type_whose_default_is_accepted() -> None:
    hints = typing.get_type_hints(Settings)
    kinds = {"text": str, "duration": timedelta, "integer": int, "flag": bool}
    assert list(config.OPTIONS) == [f.name for f in fields(Settings)]
    for name, option in config.OPTIONS.items():
        assert option.meaning and "\n" not in option.meaning and not option.meaning.endswith("."), name
        assert kinds[option.kind] is hints[name], f"{name}: row kind {option.kind} but field type {hints[name]}"
        assert option.default == getattr(Settings(), name)
        assert option.admits(option.default), f"{name}: default {option.default!r} is outside its own bounds"
        assert option.accepted(), name


def _readme_rows() -> dict[str, tuple[str, str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Configuration\n") :]
    section = section[: section.index("\n## ", 5)]
    rows: dict[str, tuple[str, str, str]] = {}
    for line in section.splitlines():
        if found := re.fullmatch(r"\| `(TIMERCTL_[A-Z_]+)` \| (.*?) \| (.*?) \| (.*) \|", line):
            variable, default, accepted, meaning = found.groups()
            assert variable not in rows, f"{variable} appears twice in the README's table"
            rows[variable] = (default, accepted, meaning)
    return rows


def test_readme_configuration_table_matches_the_settings_table() -> None:
    rows = _readme_rows()
    assert list(rows) == [option.variable for option in config.OPTIONS.values()]
    for option in config.OPTIONS.values():
        default, accepted, meaning = rows[option.variable]
        assert (accepted, meaning) == (option.accepted(), option.meaning), option.variable
        if option.shown_default is not None:
            assert default == f"`{option.shown_default}`", option.variable
        elif option.default in ("", None):
            assert default == "\u2013", option.variable  # an en dash: no default
        else:
            assert default.startswith("`") and default.endswith("`"), option.variable
            assert option.parse(default[1:-1]) == option.default, f"{option.variable}: README default {default}"


# --- at start, as a process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TIMERCTL_LEASE", "abc"), ("TIMERCTL_CLAIM_BATCH", "0"), ("TIMERCTL_POLL_INTERVAL", "0")],
)
def test_serve_runner_refuses_a_bad_setting_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    """Before the fix ``CLAIM_BATCH=0`` started a runner that spun for ever (here: a timeout)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIMERCTL_")}
    base.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), TIMERCTL_DB=str(tmp_path / "timers.db"), **{variable: value})
    done = subprocess.run(
        [sys.executable, "-m", "timerctl", "serve", "runner", "--log-format", "text"],
        cwd=ROOT,  # this tree's timerctl, whatever is installed
        env=base,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: setting {variable}={value!r} ")

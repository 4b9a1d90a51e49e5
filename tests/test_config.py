"""Settings (``config.py``): flag > environment > config file > default, each value validated once, errors naming
the variable.

Every test passes its own ``env`` mapping with ``XDG_CONFIG_HOME`` pointing into ``tmp_path``, so the
machine's real configuration is never read. Every setting is bounds-checked at start, from every source,
naming its variable on one line (exit 2). The settings table (``timerctl.config.OPTIONS``, one row per
``Settings`` field) is also what the README's configuration table must say, row for row;
``tests/test_ops.py`` checks ``daemons/timerctl.env`` the same way.
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

from tests.factories import process_env
from timerctl import config
from timerctl.attempts import RetryPolicy
from timerctl.config import Settings, load_settings
from timerctl.model import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no timerctl variables and an empty config folder."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def write_config(tmp_path: Path, text: str, name: str = "custom.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults(env: dict[str, str]) -> None:
    settings = load_settings(env)
    assert settings == Settings()
    assert settings.max_horizon == timedelta(days=365)
    assert settings.retry == RetryPolicy(8, timedelta(seconds=1), timedelta(minutes=5))
    assert settings.describe() == {
        "store": f"sqlite ({settings.db_path})",
        "queue": "direct",
        "cache": "none",
    }


@pytest.mark.parametrize(
    ("file_value", "env_value", "flag_value", "expected"),
    [
        pytest.param(None, None, None, 8.0, id="default"),
        pytest.param("11s", None, None, 11.0, id="file-over-default"),
        pytest.param("11s", "22s", None, 22.0, id="env-over-file"),
        pytest.param("11s", "22s", 33.0, 33.0, id="flag-over-env"),
        pytest.param(None, "22s", None, 22.0, id="env-without-file"),
        pytest.param("11s", "", None, 11.0, id="empty-env-falls-through"),
        pytest.param(None, None, 33.0, 33.0, id="flag-only"),
    ],
)
def test_precedence(
    tmp_path: Path,
    env: dict[str, str],
    file_value: str | None,
    env_value: str | None,
    flag_value: float | None,
    expected: float,
) -> None:
    if file_value is not None:
        env["TIMERCTL_CONFIG"] = write_config(tmp_path, f'lease = "{file_value}"\n')
    if env_value is not None:
        env["TIMERCTL_LEASE"] = env_value
    settings = load_settings(env, lease=flag_value)
    assert settings.lease == timedelta(seconds=expected)


def test_xdg_config_file_is_read_when_no_config_variable(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "xdg" / "timerctl"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text('topic = "from-xdg"\nmax_attempts = 3\n', encoding="utf-8")
    settings = load_settings(env)
    assert (settings.topic, settings.max_attempts) == ("from-xdg", 3)


def test_config_variable_beats_xdg_file(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "xdg" / "timerctl"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text('topic = "from-xdg"\n', encoding="utf-8")
    env["TIMERCTL_CONFIG"] = write_config(tmp_path, 'topic = "from-variable"\n')
    assert load_settings(env).topic == "from-variable"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param("max_horizon", "90s", timedelta(seconds=90), id="duration-seconds"),
        pytest.param("max_horizon", "2d", timedelta(days=2), id="duration-days"),
        pytest.param("lease", "1h30m", timedelta(hours=1, minutes=30), id="duration-compound"),
        pytest.param("poll_interval", "0.25", timedelta(seconds=0.25), id="bare-fractional-seconds"),
        pytest.param("retry_first_delay", "500ms", timedelta(milliseconds=500), id="milliseconds"),
        pytest.param("max_attempts", "3", 3, id="integer"),
        pytest.param("claim_batch", " 10 ", 10, id="padded-integer"),
        pytest.param("block_private_targets", "yes", True, id="bool-yes"),
        pytest.param("block_private_targets", "0", False, id="bool-zero"),
        pytest.param("topic", "orders", "orders", id="string"),
        pytest.param("db", "/tmp/x.db", "/tmp/x.db", id="db-path"),
    ],
)
def test_env_values_parsed(env: dict[str, str], name: str, text: str, expected: Any) -> None:
    env[f"TIMERCTL_{name.upper()}"] = text
    assert getattr(load_settings(env), name) == expected


@pytest.mark.parametrize(
    ("toml", "name", "expected"),
    [
        pytest.param('max_horizon = "90s"', "max_horizon", timedelta(seconds=90), id="duration-string"),
        pytest.param("max_horizon = 90", "max_horizon", timedelta(seconds=90), id="toml-integer-seconds"),
        pytest.param("lease = 1.5", "lease", timedelta(seconds=1.5), id="toml-float-seconds"),
        pytest.param("max_attempts = 4", "max_attempts", 4, id="toml-integer"),
        pytest.param("block_private_targets = true", "block_private_targets", True, id="toml-bool"),
        pytest.param('redis_url = "redis://localhost:6379/0"', "redis_url", "redis://localhost:6379/0", id="string"),
    ],
)
def test_file_values_parsed(tmp_path: Path, env: dict[str, str], toml: str, name: str, expected: Any) -> None:
    env["TIMERCTL_CONFIG"] = write_config(tmp_path, toml + "\n")
    assert getattr(load_settings(env), name) == expected


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        pytest.param("TIMERCTL_MAX_ATTEMPTS", "many", "TIMERCTL_MAX_ATTEMPTS='many' is invalid", id="int-garbage"),
        pytest.param("TIMERCTL_MAX_ATTEMPTS", "2.5", "TIMERCTL_MAX_ATTEMPTS='2.5' is invalid", id="int-fraction"),
        pytest.param("TIMERCTL_MAX_ATTEMPTS", "-1", "TIMERCTL_MAX_ATTEMPTS='-1' is out of range", id="int-negative"),
        pytest.param(
            "TIMERCTL_MAX_ATTEMPTS",
            "0",
            "TIMERCTL_MAX_ATTEMPTS='0' is out of range; expected 1 to 1000",
            id="no-attempts",
        ),
        pytest.param("TIMERCTL_CONCURRENCY", "-4", "TIMERCTL_CONCURRENCY='-4' is out of range", id="negative-int"),
        pytest.param("TIMERCTL_LEASE", "soon", "TIMERCTL_LEASE='soon' is invalid", id="duration-garbage"),
        pytest.param("TIMERCTL_LEASE", "-5s", "TIMERCTL_LEASE='-5s' is invalid", id="duration-negative"),
        pytest.param(
            "TIMERCTL_MAX_HORIZON", "5m1h", "TIMERCTL_MAX_HORIZON='5m1h' is invalid", id="duration-misordered"
        ),
        pytest.param(
            "TIMERCTL_MAX_HORIZON",
            "99999999999999999",
            "TIMERCTL_MAX_HORIZON='99999999999999999' is invalid",
            id="duration-overflow",
        ),
        pytest.param(
            "TIMERCTL_BLOCK_PRIVATE_TARGETS", "maybe", "TIMERCTL_BLOCK_PRIVATE_TARGETS='maybe' is invalid", id="bool"
        ),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], variable: str, value: str, fragment: str) -> None:
    env[variable] = value
    with pytest.raises(InvalidInput) as info:
        load_settings(env)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        pytest.param('colour = "red"', "unknown setting 'colour'", id="unknown-key"),
        pytest.param('TIMERCTL_LEASE = "5s"', "unknown setting 'TIMERCTL_LEASE'", id="env-style-key"),
        pytest.param('lease = "soon"', "TIMERCTL_LEASE='soon' is invalid", id="bad-duration"),
        pytest.param("lease = true", "TIMERCTL_LEASE=True is invalid", id="bool-for-duration"),
        pytest.param("max_attempts = 2.5", "TIMERCTL_MAX_ATTEMPTS=2.5 is invalid", id="float-for-int"),
        pytest.param("max_attempts = -3", "TIMERCTL_MAX_ATTEMPTS=-3 is out of range", id="negative-int"),
        pytest.param('block_private_targets = "perhaps"', "TIMERCTL_BLOCK_PRIVATE_TARGETS='perhaps'", id="bad-bool"),
        pytest.param("lease = ", "cannot be read", id="broken-toml"),
    ],
)
def test_bad_file_values(tmp_path: Path, env: dict[str, str], toml: str, fragment: str) -> None:
    env["TIMERCTL_CONFIG"] = write_config(tmp_path, toml + "\n")
    with pytest.raises(InvalidInput) as info:
        load_settings(env)
    assert fragment in str(info.value)


def test_bad_file_value_is_an_error_even_when_env_overrides_it(tmp_path: Path, env: dict[str, str]) -> None:
    env["TIMERCTL_CONFIG"] = write_config(tmp_path, 'lease = "soon"\n')
    env["TIMERCTL_LEASE"] = "5s"
    with pytest.raises(InvalidInput, match="TIMERCTL_LEASE='soon'"):
        load_settings(env)


def test_missing_config_file(tmp_path: Path, env: dict[str, str]) -> None:
    env["TIMERCTL_CONFIG"] = str(tmp_path / "absent.toml")
    with pytest.raises(InvalidInput, match=r"config file .*absent\.toml cannot be read"):
        load_settings(env)


def test_derived_properties(env: dict[str, str]) -> None:
    env.update(
        {
            "TIMERCTL_MAX_HORIZON": "1d",
            "TIMERCTL_MAX_ATTEMPTS": "5",
            "TIMERCTL_RETRY_FIRST_DELAY": "2s",
            "TIMERCTL_RETRY_MAX_DELAY": "1m",
            "TIMERCTL_DB": "/data/t.db",
            "TIMERCTL_KAFKA_BOOTSTRAP": "k:9092",
            "TIMERCTL_TOPIC": "t",
            "TIMERCTL_REDIS_URL": "redis://r",
        }
    )
    settings = load_settings(env)
    assert settings.max_horizon == timedelta(days=1)
    assert settings.retry == RetryPolicy(5, timedelta(seconds=2), timedelta(minutes=1))
    assert settings.db_path == "/data/t.db"
    assert settings.describe() == {"store": "sqlite (/data/t.db)", "queue": "kafka (k:9092, topic t)", "cache": "redis"}


def test_default_db_under_xdg_data_home(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert load_settings(env).db_path == str(tmp_path / "data" / "timerctl" / "timers.db")


def test_load_settings_reads_os_environ_by_default(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    monkeypatch.setenv("TIMERCTL_TOPIC", "from-os-environ")
    assert load_settings().topic == "from-os-environ"


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
    base = {**process_env(tmp_path), variable: value}
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

"""Settings: flag > environment > config file > default, each value validated once, errors naming the variable.

Every test passes its own ``env`` mapping with ``XDG_CONFIG_HOME`` pointing into ``tmp_path``, so the
machine's real configuration is never read.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from timerctl.config import Settings, load_settings
from timerctl.model import InvalidInput, RetryPolicy


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

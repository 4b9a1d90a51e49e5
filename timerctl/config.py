"""One typed Settings object, read once at start: flag > environment > config file > default.

The config file is TOML (``$TIMERCTL_CONFIG``, else ``$XDG_CONFIG_HOME/timerctl/config.toml``) with
the same names as the environment variables, lower-case and without the ``TIMERCTL_`` prefix.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from timerctl.model import InvalidInput, RetryPolicy
from timerctl.timeparse import parse_duration


def _default_db() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "timerctl" / "timers.db")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInput(f"expected a boolean (1/0, true/false), got {text!r}")


def _seconds(text: str) -> float:
    return parse_duration(text).total_seconds()


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of timerctl; environment names are ``TIMERCTL_`` + the field name upper-cased."""

    db: str = ""
    kafka_bootstrap: str = ""
    topic: str = "timers"
    group_prefix: str = "timerctl"
    mongo_uri: str = ""
    redis_url: str = ""
    max_horizon: float = 365 * 86400.0
    max_attempts: int = 8
    retry_first_delay: float = 1.0
    retry_max_delay: float = 300.0
    request_timeout: float = 10.0
    connect_timeout: float = 5.0
    lease: float = 30.0
    poll_interval: float = 0.5
    lookahead: float = 2.0
    drain_timeout: float = 15.0
    claim_batch: int = 500
    concurrency: int = 256
    per_host_concurrency: int = 32
    cache_grace: float = 3600.0
    signing_secret: str = ""
    signing_secret_previous: str = ""
    block_private_targets: bool = False
    allowed_targets: str = ""

    @property
    def consumer_group(self) -> str:
        """The persisting consumers' Kafka group."""
        return f"{self.group_prefix}-consumer"

    @property
    def runner_group(self) -> str:
        """The runners' Kafka group (the near-term fan-out)."""
        return f"{self.group_prefix}-runner"

    @property
    def horizon(self) -> timedelta:
        return timedelta(seconds=self.max_horizon)

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.retry_first_delay, self.retry_max_delay)

    @property
    def db_path(self) -> str:
        return self.db or _default_db()

    def describe(self) -> dict[str, str]:
        """Which backend each part uses, for ``doctor`` and the daemons' start-up line."""
        return {
            "store": "mongodb" if self.mongo_uri else f"sqlite ({self.db_path})",
            "queue": f"kafka ({self.kafka_bootstrap}, topic {self.topic})" if self.kafka_bootstrap else "direct",
            "cache": "redis" if self.redis_url else "none",
        }


# How each non-string field is parsed from text; durations accept "90s"/"1h" as well as bare seconds.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "max_horizon": _seconds,
    "retry_first_delay": _seconds,
    "retry_max_delay": _seconds,
    "request_timeout": _seconds,
    "connect_timeout": _seconds,
    "lease": _seconds,
    "poll_interval": _seconds,
    "lookahead": _seconds,
    "drain_timeout": _seconds,
    "cache_grace": _seconds,
    "max_attempts": int,
    "claim_batch": int,
    "concurrency": int,
    "per_host_concurrency": int,
    "block_private_targets": _bool,
}


def _parse(name: str, value: Any) -> Any:
    parser = _PARSERS.get(name, str)
    try:
        parsed = parser(str(value))
    except (ValueError, InvalidInput) as exc:
        raise InvalidInput(f"setting TIMERCTL_{name.upper()}={value!r} is invalid: {exc}") from exc
    if isinstance(parsed, int | float) and not isinstance(parsed, bool) and parsed < 0:
        raise InvalidInput(f"setting TIMERCTL_{name.upper()}={value!r} must not be negative")
    return parsed


def _config_file(env: Mapping[str, str]) -> dict[str, Any]:
    path = env.get("TIMERCTL_CONFIG")
    if not path:
        base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        candidate = Path(base) / "timerctl" / "config.toml"
        if not candidate.exists():
            return {}
        path = str(candidate)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"config file {path} cannot be read: {exc}") from exc


def load_settings(env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    """Settings from ``flags`` (non-None wins), then ``env``, then the config file, then defaults."""
    env = os.environ if env is None else env
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in _config_file(env).items():
        if key not in names:
            raise InvalidInput(f"config file has unknown setting {key!r}")
        values[key] = _parse(key, value)
    for name in names:
        raw = env.get(f"TIMERCTL_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _parse(name, raw)
    for name, value in flags.items():
        if value is not None:
            values[name] = value
    settings = replace(Settings(), **values)
    if settings.max_attempts < 1:
        raise InvalidInput("setting TIMERCTL_MAX_ATTEMPTS must be at least 1")
    return settings

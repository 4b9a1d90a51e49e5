"""One typed Settings object, read once at start: flag > environment > config file > default.

``Settings`` is also the settings table: each field carries its row (``Option``: kind, bounds and a
one-line meaning), and parsing and validation are derived from those rows, so every setting is checked
the same way from every source and a bad value is refused at start naming its variable. The tests check
``daemons/timerctl.env`` and the README's configuration table against the same rows (``OPTIONS``).

The config file is TOML (``$TIMERCTL_CONFIG``, else ``$XDG_CONFIG_HOME/timerctl/config.toml``) with
the same names as the environment variables, lower-case and without the ``TIMERCTL_`` prefix.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from timerctl.attempts import RetryPolicy
from timerctl.model import InvalidInput
from timerctl.timeparse import parse_duration

Kind = Literal["text", "duration", "integer", "flag"]

_MS, _S, _MIN, _H, _D = 0.001, 1.0, 60.0, 3600.0, 86400.0
_NAME_CHARS = r"[A-Za-z0-9._-]{1,200}"  # Kafka's topic alphabet, short enough for the ".dlq" suffix


@dataclass(frozen=True, slots=True)
class Option:
    """One row of the settings table: how a setting is read, what it accepts and what it means.

    ``low``/``high`` bound numbers (durations in seconds), ``low`` itself refused when ``above``;
    ``at_most`` names a setting this one may not exceed; ``pattern`` constrains a text.
    """

    kind: Kind
    meaning: str
    name: str = ""
    default: Any = None
    low: float | None = None
    high: float | None = None
    above: bool = False
    at_most: str | None = None
    pattern: str | None = None
    text: str = "any text"  # what a text setting holds, for the docs
    shown_default: str | None = None  # the docs' default when it is derived (the SQLite path)

    @property
    def variable(self) -> str:
        """The environment variable: ``TIMERCTL_`` and the name upper-cased."""
        return _variable(self.name)

    def accepted(self) -> str:
        """The accepted values in words, as the README's table and the error messages give them."""
        if self.kind == "flag":
            return "1/0, true/false, yes/no, on/off"
        if self.kind == "text":
            return self.text
        show = _span if self.kind == "duration" else (lambda n: f"{n:.0f}")
        low = None if self.low is None else f"more than {show(self.low)}" if self.above else show(self.low)
        high = _variable(self.at_most) if self.at_most else show(self.high) if self.high is not None else None
        if low and high:
            return f"{low}, at most {high}" if self.above or self.at_most else f"{low} to {high}"
        return f"at most {high}" if high else f"{low} or more" if low else "any"

    def parse(self, value: Any) -> Any:
        """``value`` (text from the environment, or a TOML/flag value) as this setting's type, in bounds."""
        try:
            parsed = _PARSERS[self.kind](value)
        except (ValueError, TypeError, InvalidInput) as exc:
            raise InvalidInput(f"setting {self.variable}={value!r} is invalid: {exc}") from None
        if not self.admits(parsed):
            why = "is not accepted" if self.kind == "text" else "is out of range"
            raise InvalidInput(f"setting {self.variable}={value!r} {why}; expected {self.accepted()}")
        return parsed

    def admits(self, value: Any) -> bool:
        """True when ``value`` (already of this setting's type) is within the row's own bounds."""
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return False
        if isinstance(value, timedelta):
            value = value.total_seconds()  # the bounds of a duration are in seconds
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high


def _variable(name: str) -> str:
    return f"TIMERCTL_{name.upper()}"


def _setting(kind: Kind, default: Any, meaning: str, **bounds: Any) -> Any:
    """A dataclass field whose metadata is its row of the settings table (``Any``: mypy sees the default)."""
    return field(default=default, metadata={"option": Option(kind, meaning, **bounds)})


def _text(default: str, meaning: str, **bounds: Any) -> Any:
    return _setting("text", default, meaning, **bounds)


def _duration(default: float, meaning: str, **bounds: Any) -> Any:
    """A duration setting: a ``timedelta`` everywhere; its default and bounds are given in seconds."""
    return _setting("duration", timedelta(seconds=default), meaning, **bounds)


def _integer(default: int, meaning: str, **bounds: Any) -> Any:
    return _setting("integer", default, meaning, **bounds)


def _flag(default: bool, meaning: str) -> Any:
    return _setting("flag", default, meaning)


def _default_db() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "timerctl" / "timers.db")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of timerctl; environment names are ``TIMERCTL_`` + the field name upper-cased."""

    # --- Backends
    db: str = _text(
        "",
        "The embedded SQLite store (ignored when TIMERCTL_MONGO_URI is set)",
        text="a file path",
        shown_default="$XDG_DATA_HOME/timerctl/timers.db",
    )
    kafka_bootstrap: str = _text(
        "",
        "Kafka brokers; when set, creates go through Kafka and `serve consumer` stores them",
        text="`host:port`, comma-separated",
    )
    topic: str = _text(
        "timers",
        "The Kafka topic of creates and cancels; undecodable records go to `<topic>.dlq`",
        pattern=_NAME_CHARS,
        text="1-200 of A-Z a-z 0-9 . _ -",
    )
    group_prefix: str = _text(
        "timerctl",
        "Prefix of the Kafka consumer groups `<prefix>-consumer` (persisting) and `<prefix>-runner` (fan-out)",
        pattern=_NAME_CHARS,
        text="1-200 of A-Z a-z 0-9 . _ -",
    )
    mongo_uri: str = _text(
        "",
        "When set, MongoDB is the store (database from the URI path, default `timerctl`)",
        text="`mongodb://host[:port]/database`",
    )
    redis_url: str = _text(
        "", "When set, Redis caches timers for reads", text="`redis://[user:password@]host[:port][/db]`"
    )
    # --- Timers and retries
    max_horizon: timedelta = _duration(
        365 * _D,
        "How far ahead a timer may expire; creates beyond it are refused",
        low=0.0,
        above=True,
        high=36500 * _D,
    )
    max_attempts: int = _integer(8, "Delivery attempts before a timer is Failed", low=1, high=1000)
    retry_first_delay: timedelta = _duration(
        1.0,
        "Delay before the first retry; later retries double it, with jitter",
        low=0.0,
        above=True,
        at_most="retry_max_delay",
    )
    retry_max_delay: timedelta = _duration(
        300.0, "Upper bound on the delay between two retries", low=0.0, above=True, high=30 * _D
    )
    # --- Delivery
    request_timeout: timedelta = _duration(
        10.0, "Total time one webhook attempt may take (connect, send, answer)", low=0.0, above=True, high=_H
    )
    connect_timeout: timedelta = _duration(
        5.0, "Time allowed to open the connection of one attempt", low=0.0, above=True, high=_H
    )
    concurrency: int = _integer(256, "Webhook POSTs in flight at once per runner", low=1, high=100_000)
    per_host_concurrency: int = _integer(
        32,
        "Webhook POSTs in flight at once to one host, so one slow receiver cannot hold every slot",
        low=1,
        high=100_000,
    )
    signing_secret: str = _text(
        "",
        "Standard Webhooks signing secret; when set, every POST carries a webhook-signature header",
        text="`whsec_…`",
    )
    signing_secret_previous: str = _text(
        "", "The previous signing secret during a rotation: POSTs are signed with both", text="`whsec_…`"
    )
    block_private_targets: bool = _flag(
        False, "Also refuse loopback and private-range targets (link-local, multicast and reserved are always refused)"
    )
    allowed_targets: str = _text(
        "", "Targets always allowed, whatever the blocks", text="CIDRs or host names, comma-separated"
    )
    # --- Runner
    lease: timedelta = _duration(
        8.0,
        "How long a runner's claim on a timer lasts, renewed every quarter of it; "
        "a dead runner's timers move on after it",
        low=_S,
        high=_D,
    )
    poll_interval: timedelta = _duration(0.5, "How often a runner claims what falls due", low=10 * _MS, high=_H)
    lookahead: timedelta = _duration(
        2.0, "How far ahead of expiryTime a runner claims a timer, to fire it exactly on time", low=0.0, high=_H
    )
    drain_timeout: timedelta = _duration(
        15.0, "How long a stopping runner waits for in-flight deliveries", low=0.0, high=_H
    )
    claim_batch: int = _integer(500, "Timers claimed per store round trip", low=1, high=100_000)
    retention: timedelta = _duration(
        7 * _D, "How long Finished and Cancelled timers are kept after they ended", low=0.0, high=3650 * _D
    )
    failed_retention: timedelta = _duration(
        30 * _D, "How long Failed timers are kept after they ended", low=0.0, high=3650 * _D
    )
    cache_grace: timedelta = _duration(
        _H, "How long a timer stays in the Redis cache after its expiry", low=0.0, high=365 * _D
    )
    # --- HTTP API
    api_tokens_file: str = _text(
        "", "File of API token hashes; when set, the HTTP API requires Bearer tokens", text="a file path"
    )

    @property
    def consumer_group(self) -> str:
        """The persisting consumers' Kafka group."""
        return f"{self.group_prefix}-consumer"

    @property
    def runner_group(self) -> str:
        """The runners' Kafka group (the near-term fan-out)."""
        return f"{self.group_prefix}-runner"

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


def _row(spec: Field[Any]) -> Option:
    # A field added without a row still gets one (plain text, no bounds), so it can be read and set.
    option: Option = spec.metadata.get("option") or Option("text", "")
    return replace(option, name=spec.name, default=spec.default)


#: The settings table, in the order of ``Settings``' fields, keyed by field name.
OPTIONS: dict[str, Option] = {spec.name: _row(spec) for spec in fields(Settings)}


def _span(seconds: float) -> str:
    """A duration bound as the docs write it: ``10ms``, ``1s``, ``1h``, ``36500d``."""
    for unit, size in (("d", _D), ("h", _H), ("m", _MIN), ("s", _S), ("ms", _MS)):
        count = seconds / size
        if count >= 1 and math.isclose(count, round(count), abs_tol=1e-9):
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def _text_value(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _duration_value(value: Any) -> timedelta:
    """A timedelta from ``90s``/``1h``/bare seconds, a TOML or flag number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        return parse_duration(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a duration such as 90s or a number of seconds, got {type(value).__name__}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("expected a finite number of seconds, 0 or more")
    return timedelta(seconds=seconds)


def _integer_value(value: Any) -> int:
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _flag_value(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower() if isinstance(value, str | int) else None
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


_PARSERS = {"text": _text_value, "duration": _duration_value, "integer": _integer_value, "flag": _flag_value}


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


def _check_relations(settings: Settings) -> None:
    """The rows' ``at_most`` rules, which compare two settings, on the settings finally chosen."""
    for option in OPTIONS.values():
        if option.at_most is None:
            continue
        value, limit = getattr(settings, option.name), getattr(settings, option.at_most)
        if value > limit:
            show = (lambda d: _span(d.total_seconds())) if option.kind == "duration" else str
            other = _variable(option.at_most)
            raise InvalidInput(
                f"setting {option.variable}={show(value)} is above {other}={show(limit)}; expected at most {other}"
            )


def load_settings(env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    """Settings from ``flags`` (non-None wins), then ``env``, then the config file, then defaults.

    Every value from every source is parsed and bounds-checked by its row of the table; InvalidInput
    (one line naming the variable and what is accepted) on the first bad one.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for key, value in _config_file(env).items():
        if key not in OPTIONS:
            raise InvalidInput(f"config file has unknown setting {key!r}; expected one of {', '.join(OPTIONS)}")
        values[key] = OPTIONS[key].parse(value)
    for name, option in OPTIONS.items():
        raw = env.get(option.variable)
        if raw is not None and raw != "":
            values[name] = option.parse(raw)
    for name, value in flags.items():
        if name not in OPTIONS:
            raise TypeError(f"load_settings() got an unknown setting {name!r}")
        if value is not None:
            values[name] = OPTIONS[name].parse(value)
    settings = replace(Settings(), **values)
    _check_relations(settings)
    return settings

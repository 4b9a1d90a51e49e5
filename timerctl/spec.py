"""Building a TimerSpec from what users give: CLI options or a JSON object (``--from-file``, HTTP API).

One place decides which combinations are legal, so the CLI, the bulk import and the HTTP API reject
the same inputs with the same messages. Pure: the local zone is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from timerctl.model import InvalidInput, TimerSpec
from timerctl.timeparse import parse_duration, parse_hms, parse_time

#: Accepted keys of a JSON timer spec; the camelCase names are the old service's.
SPEC_KEYS = frozenset(
    {"url", "webhookUrl", "in", "at", "expiryTime", "hours", "minutes", "seconds", "payload", "id", "timerId"}
)


def build_spec(
    url: str,
    local_zone: tzinfo,
    *,
    delay: str | None = None,
    at: str | None = None,
    hours: int | None = None,
    minutes: int | None = None,
    seconds: int | None = None,
    payload: Any = None,
    timer_id: str | None = None,
) -> TimerSpec:
    """A spec from exactly one time form: ``delay`` ("1h30m"), ``at`` (ISO-8601) or hours/minutes/seconds."""
    hms_given = hours is not None or minutes is not None or seconds is not None
    if (delay is not None) + (at is not None) + hms_given != 1:
        raise InvalidInput("give exactly one of --in DURATION, --at TIME or --hours/--minutes/--seconds")
    if delay is not None:
        return TimerSpec(url, delay=parse_duration(delay), payload=payload, timer_id=timer_id)
    if at is not None:
        return TimerSpec(url, expiry_time=parse_time(at, local_zone), payload=payload, timer_id=timer_id)
    for name, value in (("hours", hours), ("minutes", minutes), ("seconds", seconds)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidInput(f"{name} must be an integer, got {value!r}")
    return TimerSpec(url, delay=parse_hms(hours, minutes, seconds), payload=payload, timer_id=timer_id)


def spec_from_mapping(data: Any, local_zone: tzinfo) -> TimerSpec:
    """A spec from a JSON object such as ``{"url": ..., "in": "90s", "payload": {...}, "id": ...}``."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"a timer spec must be a JSON object, got {type(data).__name__}")
    if not data.keys() <= SPEC_KEYS:
        unknown = sorted(set(data) - SPEC_KEYS)
        raise InvalidInput(f"unknown field {unknown[0]!r}; accepted: {', '.join(sorted(SPEC_KEYS))}")
    url = _one(data, "url", "webhookUrl")
    at = _one(data, "at", "expiryTime")
    timer_id = _one(data, "id", "timerId")
    delay = data.get("in")
    if url is None:
        raise InvalidInput("missing webhook URL (field 'url' or 'webhookUrl')")
    for name, value in (("url", url), ("in", delay), ("at", at), ("id", timer_id)):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"field {name!r} must be a string, got {type(value).__name__}")
    return build_spec(
        url,
        local_zone,
        delay=delay,
        at=at,
        hours=data.get("hours"),
        minutes=data.get("minutes"),
        seconds=data.get("seconds"),
        payload=data.get("payload"),
        timer_id=timer_id,
    )


def _one(data: Mapping[str, Any], short: str, long: str) -> Any:
    if short in data:
        if long in data:
            raise InvalidInput(f"give either {short!r} or {long!r}, not both")
        return data[short]
    return data.get(long)

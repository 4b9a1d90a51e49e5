"""What users give and get: a TimerSpec, an Update or a retry instant from CLI options or a JSON object
(``--from-file``, the HTTP API), and a timer's detailed JSON form with its deliveries.

One place decides which combinations are legal, so the CLI, the bulk import and the HTTP API reject
the same inputs with the same messages; a create and an update read their time, URL and payload by the
same code. Pure: the local zone, and for an update or a retry "now" and the horizon, are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from typing import Any

from timerctl.attempts import Delivery
from timerctl.changes import KEEP, Update
from timerctl.model import DEFAULT_HORIZON, InvalidInput, Timer, TimerSpec, check_delay, check_instant, utc
from timerctl.timeparse import parse_duration, parse_hms, parse_time

#: Accepted keys of a JSON timer spec (a create, or the fields of an update); the camelCase names are the
#: old service's. ``onFailureUrl`` has no short form.
SPEC_KEYS = frozenset(
    {
        "url",
        "webhookUrl",
        "in",
        "at",
        "expiryTime",
        "hours",
        "minutes",
        "seconds",
        "payload",
        "id",
        "timerId",
        "onFailureUrl",
    }
)
#: Accepted keys of a retry's JSON body.
RETRY_KEYS = frozenset({"in", "at"})
#: The short name of each key with two names, and the long one.
_ALIASES = (("url", "webhookUrl"), ("at", "expiryTime"), ("id", "timerId"))
_TIME_FORMS = "--in DURATION, --at TIME or --hours/--minutes/--seconds"


def _when(
    local_zone: tzinfo,
    *,
    delay: str | None,
    at: str | None,
    hours: int | None,
    minutes: int | None,
    seconds: int | None,
    required: bool,
) -> timedelta | datetime | None:
    """The one time form given: a delay (``delay``, or hours/minutes/seconds) or an instant (``at``).

    None when none is given and ``required`` is false (an update that keeps the timer's time).
    """
    hms_given = hours is not None or minutes is not None or seconds is not None
    forms = (delay is not None) + (at is not None) + hms_given
    if forms > 1 or (required and forms == 0):
        raise InvalidInput(f"give {'exactly' if required else 'at most'} one of {_TIME_FORMS}")
    if delay is not None:
        return parse_duration(delay)
    if at is not None:
        return parse_time(at, local_zone)
    if not hms_given:
        return None
    for name, value in (("hours", hours), ("minutes", minutes), ("seconds", seconds)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidInput(f"{name} must be an integer, got {value!r}")
    return parse_hms(hours, minutes, seconds)


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
    on_failure_url: str | None = None,
) -> TimerSpec:
    """A spec from exactly one time form: ``delay`` ("1h30m"), ``at`` (ISO-8601) or hours/minutes/seconds."""
    when = _when(local_zone, delay=delay, at=at, hours=hours, minutes=minutes, seconds=seconds, required=True)
    if isinstance(when, datetime):
        return TimerSpec(url, expiry_time=when, payload=payload, timer_id=timer_id, on_failure_url=on_failure_url)
    return TimerSpec(url, delay=when, payload=payload, timer_id=timer_id, on_failure_url=on_failure_url)


def build_update(
    local_zone: tzinfo,
    now: datetime,
    horizon: timedelta = DEFAULT_HORIZON,
    *,
    delay: str | None = None,
    at: str | None = None,
    hours: int | None = None,
    minutes: int | None = None,
    seconds: int | None = None,
    url: str | None = None,
    payload: Any = KEEP,
    on_failure_url: Any = KEEP,
) -> Update:
    """An Update from at most one time form (resolved against ``now``, checked as a create's), a new ``url``,
    ``payload`` (None is "no payload") and ``on_failure_url`` (None removes it); ``KEEP`` or None keeps one."""
    when = _when(local_zone, delay=delay, at=at, hours=hours, minutes=minutes, seconds=seconds, required=False)
    expiry: Any = KEEP
    if isinstance(when, timedelta):
        expiry = utc(now + check_delay(when, horizon))
    elif isinstance(when, datetime):
        expiry = check_instant(when, now, horizon)
    return Update(
        expiry_time=expiry, webhook_url=KEEP if url is None else url, payload=payload, on_failure_url=on_failure_url
    )


def retry_instant(
    local_zone: tzinfo,
    now: datetime,
    horizon: timedelta = DEFAULT_HORIZON,
    *,
    delay: str | None = None,
    at: str | None = None,
) -> datetime | None:
    """When a retried timer is due: ``now`` + ``delay`` or the instant ``at``, checked as a create's; None
    (due now) when neither is given or the delay is 0."""
    if delay is not None and at is not None:
        raise InvalidInput("give at most one of --in DURATION or --at TIME")
    if delay is not None:
        wait = check_delay(parse_duration(delay), horizon)
        return utc(now + wait) if wait else None
    if at is not None:
        return check_instant(parse_time(at, local_zone), now, horizon)
    return None


def spec_from_mapping(data: Any, local_zone: tzinfo) -> TimerSpec:
    """A spec from a JSON object such as ``{"url": ..., "in": "90s", "payload": {...}, "id": ...}``."""
    fields = _fields(data, "a timer spec")
    url = fields.get("url")
    if url is None:
        raise InvalidInput("missing webhook URL (field 'url' or 'webhookUrl')")
    return build_spec(
        url,
        local_zone,
        delay=fields.get("in"),
        at=fields.get("at"),
        hours=fields.get("hours"),
        minutes=fields.get("minutes"),
        seconds=fields.get("seconds"),
        payload=fields.get("payload"),
        timer_id=fields.get("id"),
        on_failure_url=fields.get("onFailureUrl"),
    )


def update_from_mapping(
    data: Any, local_zone: tzinfo, now: datetime, horizon: timedelta = DEFAULT_HORIZON, *, timer_id: str
) -> Update:
    """An Update from a create's fields, each optional: a field left out is kept, ``"payload": null`` clears
    the payload and ``"onFailureUrl": null`` removes the callback. An id may repeat ``timer_id``, not change it."""
    fields = _fields(data, "an update")
    if "id" in fields and fields["id"] != timer_id:
        raise InvalidInput(f"field 'id' is {fields['id']!r}, but the timer updated is {timer_id!r}; ids cannot change")
    if "url" in fields and fields["url"] is None:
        raise InvalidInput("the webhook URL cannot be removed; give a new 'url' or leave the field out")
    change = build_update(
        local_zone,
        now,
        horizon,
        delay=fields.get("in"),
        at=fields.get("at"),
        hours=fields.get("hours"),
        minutes=fields.get("minutes"),
        seconds=fields.get("seconds"),
        url=fields.get("url"),
        payload=fields.get("payload", KEEP),
        on_failure_url=fields.get("onFailureUrl", KEEP),
    )
    if change.empty:
        raise InvalidInput(f"nothing to change; give any of {', '.join(sorted(SPEC_KEYS - {'id', 'timerId'}))}")
    return change


def retry_from_mapping(
    data: Any, local_zone: tzinfo, now: datetime, horizon: timedelta = DEFAULT_HORIZON
) -> datetime | None:
    """The instant of a retry's JSON body (``{"in": "10m"}``, ``{"at": ...}``; None or ``{}`` for now)."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise InvalidInput(f"a retry must be a JSON object, got {type(data).__name__}")
    _known(data, RETRY_KEYS)
    _strings(data, ("in", "at"))
    return retry_instant(local_zone, now, horizon, delay=data.get("in"), at=data.get("at"))


def detail_json(timer: Timer, deliveries: Sequence[Delivery], now: datetime) -> dict[str, Any]:
    """The timer's JSON form with ``deliveries`` (the attempts kept, oldest first) and ``deliveriesOmitted``
    (how many older attempts were made but are no longer kept): ``get --json`` and the API's detail."""
    data = timer.to_json(now)
    data["deliveries"] = [d.to_json() for d in deliveries]
    data["deliveriesOmitted"] = max(0, timer.delivery_count - len(deliveries))
    return data


def _fields(data: Any, what: str) -> dict[str, Any]:
    """The fields of a JSON spec by their short names, each one present only when given (a null included)."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, got {type(data).__name__}")
    _known(data, SPEC_KEYS)
    fields = dict(data)
    for short, long in _ALIASES:
        if long in fields:
            if short in fields:
                raise InvalidInput(f"give either {short!r} or {long!r}, not both")
            fields[short] = fields.pop(long)
    _strings(fields, ("url", "in", "at", "id", "onFailureUrl"))
    return fields


def _known(data: Mapping[str, Any], accepted: frozenset[str]) -> None:
    if not data.keys() <= accepted:
        unknown = sorted(set(data) - accepted)
        raise InvalidInput(f"unknown field {unknown[0]!r}; accepted: {', '.join(sorted(accepted))}")


def _strings(fields: Mapping[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"field {name!r} must be a string, got {type(value).__name__}")

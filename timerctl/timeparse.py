"""Durations ("1h30m", "90s", "2d") and instants (ISO-8601) as users type them — pure.

A naive instant is local time; the caller passes the local zone so this module never reads the clock
or the machine's settings itself.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, tzinfo

from timerctl.model import InvalidInput, utc

_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_ORDER = ["w", "d", "h", "m", "s", "ms"]
_NUM = r"(\d+(?:\.\d+)?)"
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_WHOLE = re.compile("".join(f"(?:{_NUM}{u}{'(?!s)' if u == 'm' else ''})?" for u in _ORDER) + r"(?<=[a-z])")


def parse_duration(text: str) -> timedelta:
    """A non-negative timedelta from ``90s``, ``15m``, ``1h30m``, ``2d``, ``1h2m3.5s`` or bare seconds.

    Units must come largest first and at most once each, so typos like ``5m1h`` are rejected rather
    than guessed at.
    """
    # A bulk import repeats a few delays many times; short texts are remembered (a long one is rare
    # and would make the cache hold a lot of memory).
    return _parse_duration_cached(text) if len(text) <= 32 else _parse_duration(text)


@functools.lru_cache(maxsize=1024)
def _parse_duration_cached(text: str) -> timedelta:
    return _parse_duration(text)


def _parse_duration(text: str) -> timedelta:
    raw = text.strip().lower()
    if raw.startswith("-"):
        raise InvalidInput(f"duration {text!r} is negative; expected 0s or more")
    if _SECONDS.fullmatch(raw):
        return _delta(text, float(raw))
    if fast := _WHOLE.fullmatch(raw):  # the common, well-formed case in one regex pass
        return _delta(text, sum(float(v) * _UNITS[u] for u, v in zip(_ORDER, fast.groups(), strict=True) if v))
    pos, total, last = 0, 0.0, -1
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        idx = _ORDER.index(match.group(2))
        if idx <= last:
            raise InvalidInput(f"duration {text!r} repeats or misorders units; write them largest first, like 1h30m")
        last = idx
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or not raw:
        raise InvalidInput(f"invalid duration {text!r}; expected like 90s, 15m, 1h30m, 2d or 1h2m3.5s")
    return _delta(text, total)


def _delta(text: str, seconds: float) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError as exc:
        raise InvalidInput(f"duration {text!r} is too large") from exc


def parse_time(text: str, local_zone: tzinfo) -> datetime:
    """A UTC datetime from ISO-8601 with an offset or ``Z``; a naive time is read in ``local_zone``.

    A naive local time that falls in a DST gap or fold resolves the way ``zoneinfo`` does (fold=0:
    the first of two repeated times; a skipped time is shifted by the gap), documented in the README.
    """
    raw = text.strip()
    try:
        dt = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in ("Z", "z") else raw)
    except (ValueError, IndexError) as exc:
        raise InvalidInput(
            f"invalid time {text!r}; expected ISO-8601 like 2026-11-25T18:00:00Z or 2026-11-25T19:00+01:00"
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=local_zone)
    try:
        return utc(dt)
    except OverflowError as exc:  # e.g. 9999-12-31T23:59-01:00 is past year 9999 in UTC
        raise InvalidInput(f"time {text!r} is out of range in UTC") from exc


def parse_hms(hours: int | None, minutes: int | None, seconds: int | None) -> timedelta:
    """A delay from the old service's form: integers, hours >= 0, minutes and seconds 0-59."""
    h, m, s = hours or 0, minutes or 0, seconds or 0
    if h < 0:
        raise InvalidInput(f"hours must be 0 or more, got {h}")
    if not 0 <= m <= 59:
        raise InvalidInput(f"minutes must be 0-59, got {m}")
    if not 0 <= s <= 59:
        raise InvalidInput(f"seconds must be 0-59, got {s}")
    try:
        return timedelta(hours=h, minutes=m, seconds=s)
    except OverflowError as exc:
        raise InvalidInput(f"hours {h} is too large") from exc


def format_duration(seconds: float) -> str:
    """A short human form such as ``1h02m03s`` for tables and countdowns."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"

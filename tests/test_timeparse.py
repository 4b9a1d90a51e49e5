"""Durations, instants and the hours/minutes/seconds form as users type them.

Pure functions only: every instant is fixed and the local zone is passed in, never read from the machine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from timerctl.model import InvalidInput
from timerctl.timeparse import format_duration, parse_duration, parse_hms, parse_time

UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("90s", 90, id="seconds"),
        pytest.param("15m", 900, id="minutes"),
        pytest.param("1h30m", 5400, id="hours-minutes"),
        pytest.param("2d", 172_800, id="days"),
        pytest.param("1w", 604_800, id="weeks"),
        pytest.param("1h2m3.5s", 3723.5, id="fractional-seconds"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("1d2h3m4s5ms", 93_784.005, id="every-unit-in-order"),
        pytest.param("90", 90, id="bare-seconds"),
        pytest.param("1.5", 1.5, id="bare-fractional-seconds"),
        pytest.param("0s", 0, id="zero-with-unit"),
        pytest.param("0", 0, id="zero-bare"),
        pytest.param(" 5M ", 300, id="case-and-surrounding-space"),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("-5s", "negative", id="negative"),
        pytest.param("-0s", "negative", id="negative-zero"),
        pytest.param("5m1h", "largest first", id="misordered-units"),
        pytest.param("1h1h", "largest first", id="repeated-unit"),
        pytest.param("1s1ms1s", "largest first", id="repeated-after-smaller"),
        pytest.param("garbage", "invalid duration", id="garbage"),
        pytest.param("", "invalid duration", id="empty"),
        pytest.param("   ", "invalid duration", id="blank"),
        pytest.param("5x", "invalid duration", id="unknown-unit"),
        pytest.param("1h 30m", "invalid duration", id="space-between-parts"),
        pytest.param("h", "invalid duration", id="unit-without-number"),
        pytest.param("1.s", "invalid duration", id="dangling-decimal-point"),
        pytest.param(".5s", "invalid duration", id="leading-decimal-point"),
        pytest.param("1e3", "invalid duration", id="exponent"),
        pytest.param("inf", "invalid duration", id="infinity"),
        pytest.param("90s!", "invalid duration", id="trailing-junk"),
        pytest.param("99999999999999999s", "too large", id="overflow-with-unit"),
        pytest.param("99999999999999999", "too large", id="overflow-bare"),
        pytest.param("9" * 400, "too large", id="overflow-bare-to-infinity"),
    ],
)
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        pytest.param("2030-01-01T12:00:00Z", UTC_ZONE, datetime(2030, 1, 1, 12, tzinfo=UTC), id="zulu"),
        pytest.param("2030-01-01T12:00:00z", UTC_ZONE, datetime(2030, 1, 1, 12, tzinfo=UTC), id="lower-zulu"),
        pytest.param("2030-01-01T12:00:00+01:00", UTC_ZONE, datetime(2030, 1, 1, 11, tzinfo=UTC), id="plus-offset"),
        pytest.param(
            "2030-01-01T12:00:00-05:30", UTC_ZONE, datetime(2030, 1, 1, 17, 30, tzinfo=UTC), id="minus-offset"
        ),
        pytest.param(
            "2030-01-01T12:00:00+01:00", NEW_YORK, datetime(2030, 1, 1, 11, tzinfo=UTC), id="offset-beats-local-zone"
        ),
        pytest.param("2030-01-01T12:00:00", NEW_YORK, datetime(2030, 1, 1, 17, tzinfo=UTC), id="naive-local-winter"),
        pytest.param("2030-07-01T12:00:00", PARIS, datetime(2030, 7, 1, 10, tzinfo=UTC), id="naive-local-summer"),
        pytest.param("2030-01-01", PARIS, datetime(2029, 12, 31, 23, tzinfo=UTC), id="date-only-is-local-midnight"),
        pytest.param(
            "2030-01-01T12:00:00.123456Z",
            UTC_ZONE,
            datetime(2030, 1, 1, 12, 0, 0, 123_000, tzinfo=UTC),
            id="microseconds-truncated-to-ms",
        ),
        pytest.param(
            "2030-01-01T12:00:00.999999Z",
            UTC_ZONE,
            datetime(2030, 1, 1, 12, 0, 0, 999_000, tzinfo=UTC),
            id="truncated-not-rounded",
        ),
        pytest.param(
            "2030-01-01T12:00:00.5+02:00", UTC_ZONE, datetime(2030, 1, 1, 10, 0, 0, 500_000, tzinfo=UTC), id="half"
        ),
        pytest.param(" 2030-01-01T12:00:00Z ", UTC_ZONE, datetime(2030, 1, 1, 12, tzinfo=UTC), id="surrounding-space"),
    ],
)
def test_parse_time_accepts(text: str, zone: ZoneInfo, expected: datetime) -> None:
    parsed = parse_time(text, zone)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.microsecond % 1000 == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("tomorrow", "invalid time", id="words"),
        pytest.param("", "invalid time", id="empty"),
        pytest.param("Z", "invalid time", id="only-zulu"),
        pytest.param("2030-13-01T00:00:00Z", "invalid time", id="month-13"),
        pytest.param("2030-02-30T00:00:00Z", "invalid time", id="february-30"),
        pytest.param("2030-01-01T25:00:00Z", "invalid time", id="hour-25"),
        pytest.param("2030-01-01T12:00:00+25:00", "invalid time", id="offset-out-of-range"),
        pytest.param("9999-12-31T23:59:59-01:00", "out of range", id="after-year-9999-in-utc"),
        pytest.param("0001-01-01T00:00:00+01:00", "out of range", id="before-year-1-in-utc"),
    ],
)
def test_parse_time_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_time(text, UTC_ZONE)


def test_parse_time_naive_in_dst_gap_follows_zoneinfo() -> None:
    # 02:30 on 2030-03-31 does not exist in Paris; zoneinfo (fold=0) reads it with the pre-gap offset +01:00.
    assert parse_time("2030-03-31T02:30:00", PARIS) == datetime(2030, 3, 31, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("hours", "minutes", "seconds", "expected"),
    [
        pytest.param(0, 0, 0, timedelta(0), id="all-zero"),
        pytest.param(None, None, 5, timedelta(seconds=5), id="only-seconds"),
        pytest.param(None, 59, None, timedelta(minutes=59), id="minutes-59"),
        pytest.param(0, 0, 59, timedelta(seconds=59), id="seconds-59"),
        pytest.param(1, 2, 3, timedelta(hours=1, minutes=2, seconds=3), id="all-three"),
        pytest.param(100, 0, 0, timedelta(hours=100), id="hours-unbounded-above"),
    ],
)
def test_parse_hms_accepts(hours: int | None, minutes: int | None, seconds: int | None, expected: timedelta) -> None:
    assert parse_hms(hours, minutes, seconds) == expected


@pytest.mark.parametrize(
    ("hours", "minutes", "seconds", "fragment"),
    [
        pytest.param(-1, 0, 0, "hours must be 0 or more, got -1", id="negative-hours"),
        pytest.param(0, 60, 0, "minutes must be 0-59, got 60", id="minutes-60"),
        pytest.param(0, -1, 0, "minutes must be 0-59, got -1", id="negative-minutes"),
        pytest.param(0, 0, 60, "seconds must be 0-59, got 60", id="seconds-60"),
        pytest.param(0, 0, -1, "seconds must be 0-59, got -1", id="negative-seconds"),
        pytest.param(10**12, 0, 0, "too large", id="hours-overflow"),
    ],
)
def test_parse_hms_rejects(hours: int, minutes: int, seconds: int, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_hms(hours, minutes, seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(0, "0s", id="zero"),
        pytest.param(-5, "0s", id="negative-clamped"),
        pytest.param(59.9, "59s", id="seconds-floored"),
        pytest.param(60, "1m00s", id="one-minute"),
        pytest.param(3723, "1h02m03s", id="hours"),
        pytest.param(90_061, "1d01h01m", id="days"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text

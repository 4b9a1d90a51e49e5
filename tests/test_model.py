"""The pure core (``model.py``): validation, the status state machine, the JSON forms, attempts and
outcomes, retries, and the delays and instants a change may ask for.

Every instant is fixed (``NOW``); nothing here reads the clock, the machine's zone or randomness.
``TimerSpec`` (what a create asks for) is tested with the building of specs, in ``test_spec.py``; the rules
of what a person may do to a timer later (cancel, update, fire now, retry) in ``test_changes.py``.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest

from tests.factories import (
    INSTANT_RE,
    MAX_PAYLOAD_TEXT_BYTES,
    PUBLIC_KEYS,
    json_string_of_bytes,
    make_timer,
    url_of_length,
)
from timerctl.attempts import Delivery, Outcome, RetryPolicy
from timerctl.model import (
    DEFAULT_HORIZON,
    MAX_PAYLOAD_BYTES,
    MAX_URL_LENGTH,
    PENDING_STATUSES,
    Conflict,
    InvalidInput,
    NotFound,
    Status,
    Timer,
    can_transition,
    check_delay,
    check_instant,
    encode_payload,
    format_instant,
    parse_instant,
    parse_payload,
    parse_status,
    utc,
    validate_timer_id,
    validate_url,
)

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
URL = "https://hooks.example.com/fire"


#: ``make(**fields)``: timer ``t-1`` (Scheduled unless ``status=``), due a minute after NOW, created an hour before.
make = partial(make_timer, "t-1", NOW + timedelta(minutes=1), url=URL, created_at=NOW - timedelta(hours=1))


# --- the state machine ---------------------------------------------------------------------------------

S, R, Y, F, X, C = (
    Status.SCHEDULED,
    Status.RUNNING,
    Status.RETRYING,
    Status.FINISHED,
    Status.FAILED,
    Status.CANCELLED,
)
# Written out independently of model.TRANSITIONS, so a change there must be a deliberate change here.
ALLOWED = {
    (S, S),  # update, fire now
    (S, R),  # the POST starts
    (S, C),
    (Y, Y),  # update, fire now between attempts
    (Y, R),
    (Y, C),
    (R, R),  # taken over from a runner that died mid-POST
    (R, S),  # a start handed back before the first attempt
    (R, Y),  # a failed attempt, or a start handed back after one
    (R, F),
    (R, X),
    (X, S),  # retried by hand
}
ALL_PAIRS = [(src, dst) for src in Status for dst in Status]


@pytest.mark.parametrize(
    ("src", "dst", "allowed"),
    [pytest.param(src, dst, (src, dst) in ALLOWED, id=f"{src.value}->{dst.value}") for src, dst in ALL_PAIRS],
)
def test_transition_table(src: Status, dst: Status, allowed: bool) -> None:
    assert can_transition(src, dst) is allowed
    timer = make(status=src)
    if allowed:
        moved = timer.move(dst, attempts=3)
        assert (moved.status, moved.attempts, timer.status) == (dst, 3, src)
    else:
        with pytest.raises(ValueError, match=f"{src.value} -> {dst.value} is not allowed"):
            timer.move(dst)


@pytest.mark.parametrize(
    ("status", "final", "pending"),
    [pytest.param(s, s in {F, X, C}, s in {S, Y}, id=s.value) for s in Status],
)
def test_final_and_pending_statuses(status: Status, final: bool, pending: bool) -> None:
    assert (status.is_final, status.is_pending) == (final, pending)
    assert (status in PENDING_STATUSES) is pending
    way_out = {dst for dst in Status if can_transition(status, dst)}
    if final:
        assert way_out == ({S} if status is X else set()), "only a Failed timer moves on: retried by hand"
    else:
        assert R in way_out, "every timer not ended may still be POSTed"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        pytest.param("Scheduled", S, id="exact"),
        pytest.param("running", R, id="lower"),
        pytest.param("RETRYING", Y, id="retrying"),
        pytest.param("FINISHED", F, id="upper"),
        pytest.param(" failed ", X, id="padded"),
        pytest.param("cancelled", C, id="cancelled"),
    ],
)
def test_parse_status_accepts(text: str, status: Status) -> None:
    assert parse_status(text) is status


@pytest.mark.parametrize("text", [pytest.param(t, id=t or "empty") for t in ["done", "", "Cancel", "Schedule d"]])
def test_parse_status_rejects_naming_accepted_values(text: str) -> None:
    with pytest.raises(
        InvalidInput, match=r"expected one of Scheduled, Running, Retrying, Finished, Failed, Cancelled$"
    ):
        parse_status(text)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(InvalidInput("x"), 2, id="invalid"),
        pytest.param(NotFound("x"), 1, id="not-found"),
        pytest.param(Conflict("x"), 4, id="conflict"),
    ],
)
def test_error_exit_codes(error: Exception, code: int) -> None:
    assert getattr(error, "exit_code", None) == code


def test_not_found_message() -> None:
    assert str(NotFound("nope")) == "timer nope not found"


# --- retries ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "base"),
    [
        pytest.param(0, 2.0, id="before-first-attempt"),
        pytest.param(1, 2.0, id="after-1"),
        pytest.param(2, 4.0, id="after-2"),
        pytest.param(3, 8.0, id="after-3"),
        pytest.param(5, 32.0, id="after-5"),
        pytest.param(6, 50.0, id="after-6-capped"),
        pytest.param(9, 50.0, id="after-9-capped"),
    ],
)
@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999999])
def test_retry_delay_is_jittered_within_half_to_full_base(attempts: int, base: float, rand: float) -> None:
    policy = RetryPolicy(max_attempts=10, first_delay=timedelta(seconds=2), max_delay=timedelta(seconds=50))
    delay = policy.next_delay(attempts, rand)
    assert delay is not None
    assert base / 2 <= delay.total_seconds() <= base
    assert delay.total_seconds() == pytest.approx(base / 2 + base / 2 * rand)


@pytest.mark.parametrize(
    ("attempts", "exhausted"),
    [
        pytest.param(2, False, id="below"),
        pytest.param(3, True, id="at-max"),
        pytest.param(4, True, id="above"),
    ],
)
def test_retry_gives_up_after_max_attempts(attempts: int, exhausted: bool) -> None:
    policy = RetryPolicy(max_attempts=3, first_delay=timedelta(seconds=1), max_delay=timedelta(seconds=10))
    delay = policy.next_delay(attempts, 0.5)
    assert (delay is None) is exhausted


# --- instants --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        pytest.param(datetime(2030, 1, 1, tzinfo=UTC), "2030-01-01T00:00:00.000Z", id="midnight"),
        pytest.param(datetime(2030, 1, 1, 0, 0, 0, 123_999, tzinfo=UTC), "2030-01-01T00:00:00.123Z", id="truncated"),
        pytest.param(
            datetime(2030, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))), "2030-01-01T00:00:00.000Z", id="offset"
        ),
    ],
)
def test_format_instant(dt: datetime, text: str) -> None:
    assert format_instant(dt) == text
    assert parse_instant(text) == utc(dt)


def test_utc_refuses_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc(datetime(2030, 1, 1))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("soon", "invalid instant", id="garbage"),
        pytest.param(123, "invalid instant", id="not-a-string"),
        pytest.param("2030-01-01T00:00:00", "has no offset", id="naive"),
        pytest.param("0001-01-01T00:00:00+01:00", "out of range", id="before-year-1"),
    ],
)
def test_parse_instant_rejects(value: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_instant(value)


# --- URLs, ids and payloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://example.com", id="https"),
        pytest.param("http://localhost:8080/hook?x=1#frag", id="http-port-query"),
        pytest.param("HTTPS://EXAMPLE.COM/x", id="upper-case-scheme"),
        pytest.param("http://[::1]:8080/x", id="ipv6"),
        pytest.param("http://10.0.0.1/x", id="ipv4"),
        pytest.param(url_of_length(MAX_URL_LENGTH), id="exactly-2048-chars"),
    ],
)
def test_validate_url_accepts(url: str) -> None:
    assert validate_url(url) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param(url_of_length(MAX_URL_LENGTH + 1), "2049 characters", id="2049-chars"),
        pytest.param("ftp://example.com/x", "http:// or https://", id="ftp"),
        pytest.param("file:///etc/passwd", "http:// or https://", id="file"),
        pytest.param("javascript:alert(1)", "http:// or https://", id="javascript"),
        pytest.param("example.com/x", "http:// or https://", id="no-scheme"),
        pytest.param("//example.com/x", "http:// or https://", id="scheme-relative"),
        pytest.param("http://user:pw@example.com/", "credentials", id="user-password"),
        pytest.param("http://user@example.com/", "credentials", id="user-only"),
        pytest.param("http:///path", "no host", id="no-host"),
        pytest.param("https://", "no host", id="nothing-after-scheme"),
        pytest.param("http://example.com:99999/", "invalid webhook URL", id="port-out-of-range"),
        pytest.param("http://example.com:port/", "invalid webhook URL", id="port-not-a-number"),
        pytest.param("http://[::1/", "invalid webhook URL", id="broken-ipv6"),
        pytest.param("http://example.com/a\r\nX-Injected: 1", "control characters", id="crlf"),
        pytest.param("http://example.com/a\nb", "control characters", id="lf"),
        pytest.param("http://example.com/a\rb", "control characters", id="cr"),
        pytest.param("http://example.com/a b", "whitespace", id="space"),
        pytest.param("http://example.com/a\tb", "whitespace", id="tab"),
        pytest.param("http://example.com/\x00", "control characters", id="nul"),
        pytest.param("http://example.com/\x7f", "control characters", id="del"),
    ],
)
def test_validate_url_rejects(url: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        validate_url(url)


@pytest.mark.parametrize(
    "timer_id",
    [
        pytest.param("a", id="one-char"),
        pytest.param("x" * 128, id="128-chars"),
        pytest.param("Job_1.retry:2-b", id="every-punctuation"),
        pytest.param(str(uuid.UUID(int=1)), id="uuid"),
    ],
)
def test_validate_timer_id_accepts(timer_id: str) -> None:
    assert validate_timer_id(timer_id) == timer_id


@pytest.mark.parametrize(
    "timer_id",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param("a b", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param(5, id="not-a-string"),
    ],
)
def test_validate_timer_id_rejects(timer_id: Any) -> None:
    with pytest.raises(InvalidInput, match="expected 1-128 characters"):
        validate_timer_id(timer_id)


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        pytest.param(None, None, id="none"),
        pytest.param({"a": [1, 2.5, True, None]}, '{"a":[1,2.5,true,null]}', id="compact"),
        pytest.param("caf\u00e9", '"caf\u00e9"', id="unicode-kept"),
        pytest.param(
            json.loads(json_string_of_bytes(MAX_PAYLOAD_BYTES)),
            json_string_of_bytes(MAX_PAYLOAD_BYTES),
            id="exactly-64KiB",
        ),
    ],
)
def test_encode_payload_accepts(payload: Any, text: str | None) -> None:
    assert encode_payload(payload) == text


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        pytest.param(json.loads(json_string_of_bytes(MAX_PAYLOAD_BYTES + 1)), "65537 bytes", id="64KiB-plus-1"),
        pytest.param("\u00e9" * (MAX_PAYLOAD_BYTES // 2), "65538 bytes", id="multibyte-counted-in-bytes"),
        pytest.param(float("nan"), "not JSON-serialisable", id="nan"),
        pytest.param({"a": {1, 2}}, "not JSON-serialisable", id="set"),
        pytest.param("\ud800", "not JSON-serialisable", id="lone-surrogate"),
    ],
)
def test_encode_payload_rejects(payload: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        encode_payload(payload)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        pytest.param('{"a": 1}', {"a": 1}, id="object"),
        pytest.param("[1, 2]", [1, 2], id="array"),
        pytest.param('"s"', "s", id="string"),
        pytest.param("null", None, id="null"),
        pytest.param(" 42 \n", 42, id="padded-number"),
        pytest.param(json_string_of_bytes(MAX_PAYLOAD_BYTES), "a" * (MAX_PAYLOAD_BYTES - 2), id="exactly-64KiB"),
    ],
)
def test_parse_payload_accepts(text: str, value: Any) -> None:
    assert parse_payload(text) == value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("{", "not valid JSON", id="truncated"),
        pytest.param("", "not valid JSON", id="empty"),
        pytest.param("{'a': 1}", "not valid JSON", id="single-quotes"),
        pytest.param('{"a": 1} x', "not valid JSON", id="trailing-junk"),
        pytest.param("NaN", "not JSON-serialisable", id="nan"),
        pytest.param("[Infinity]", "not JSON-serialisable", id="infinity"),
        pytest.param('"\\ud800"', "not JSON-serialisable", id="escaped-lone-surrogate"),
        pytest.param("[" * 30_000 + "]" * 30_000, "nested too deeply", id="deep-nesting"),
        pytest.param(json_string_of_bytes(MAX_PAYLOAD_BYTES + 1), "over 65536 bytes", id="64KiB-plus-1"),
    ],
)
def test_parse_payload_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_payload(text)


def test_payload_text_over_1MiB_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the text was parsed")

    monkeypatch.setattr("timerctl.model.json.loads", no_parse)
    with pytest.raises(InvalidInput, match=r"^payload text is over 1048576 bytes \(1 MiB\)"):
        parse_payload("[" + " " * MAX_PAYLOAD_TEXT_BYTES + "1]")
    with pytest.raises(InvalidInput, match="over 1048576 bytes"):
        parse_payload('"' + "é" * (MAX_PAYLOAD_TEXT_BYTES // 2) + '"')  # counted in bytes, not characters


# --- the JSON forms --------------------------------------------------------------------------------------

#: Every key of the public JSON form: the old service's fields, then those of a timer's whole life.
JSON_KEYS = PUBLIC_KEYS | {"nextAttemptAt", "endedAt", "deliveryCount", "onFailureUrl"}
#: The record (queue, cache) form: the public fields without the derived timeLeft, plus dueAt and revision.
RECORD_KEYS = (JSON_KEYS - {"timeLeft"}) | {"dueAt", "revision"}


def test_to_json_exact_keys_and_formats() -> None:
    timer = make(
        status=X,
        payload={"n": 1},
        attempts=2,
        fired_at=NOW + timedelta(minutes=1, milliseconds=7),
        last_error="HTTP 500",
        expiry_time=NOW + timedelta(minutes=1, microseconds=999),
        ended_at=NOW + timedelta(minutes=2, milliseconds=1),
        delivery_count=9,
        on_failure_url="https://ops.example.com/failed",
        revision=4,
    )
    data = timer.to_json(NOW)
    assert data == {
        "timerId": "t-1",
        "webhookUrl": URL,
        "expiryTime": "2030-01-01T12:01:00.000Z",
        "createdAt": "2030-01-01T11:00:00.000Z",
        "timerStatus": "Failed",
        "timeLeft": 0,
        "payload": {"n": 1},
        "attempts": 2,
        "firedAt": "2030-01-01T12:01:00.007Z",
        "lastError": "HTTP 500",
        "nextAttemptAt": None,
        "endedAt": "2030-01-01T12:02:00.001Z",
        "deliveryCount": 9,
        "onFailureUrl": "https://ops.example.com/failed",
    }
    assert list(data)[: len(PUBLIC_KEYS)] == [
        "timerId", "webhookUrl", "expiryTime", "createdAt", "timerStatus", "timeLeft", "payload", "attempts",
        "firedAt", "lastError",
    ], "the old service's fields first, in its order"  # fmt: skip
    assert all(INSTANT_RE.fullmatch(data[k]) for k in ("expiryTime", "createdAt", "firedAt", "endedAt"))
    assert json.loads(json.dumps(data)) == data
    assert "revision" not in data, "an internal counter: on the record form only"


def test_to_json_nulls_for_a_new_timer() -> None:
    data = make().to_json(NOW)
    assert set(data) == JSON_KEYS
    assert (data["firedAt"], data["lastError"], data["payload"], data["attempts"]) == (None, None, None, 0)
    assert (data["endedAt"], data["deliveryCount"], data["onFailureUrl"]) == (None, 0, None)
    assert data["timerStatus"] == "Scheduled"
    assert data["nextAttemptAt"] == "2030-01-01T12:01:00.000Z"


@pytest.mark.parametrize(
    ("status", "next_attempt"),
    [
        pytest.param(S, "2030-01-01T12:00:30.000Z", id="scheduled"),
        pytest.param(Y, "2030-01-01T12:00:30.000Z", id="retrying"),
        pytest.param(R, None, id="running"),
        pytest.param(F, None, id="finished"),
        pytest.param(C, None, id="cancelled"),
    ],
)
def test_next_attempt_at_is_the_due_time_of_a_pending_timer_only(status: Status, next_attempt: str | None) -> None:
    timer = make(status=status, attempts=1, due_at=NOW + timedelta(seconds=30))
    assert timer.to_json(NOW)["nextAttemptAt"] == next_attempt


@pytest.mark.parametrize(
    ("before_due", "left"),
    [
        pytest.param(timedelta(seconds=90), 90, id="whole"),
        pytest.param(timedelta(seconds=89, milliseconds=1), 90, id="rounded-up"),
        pytest.param(timedelta(seconds=1), 1, id="one"),
        pytest.param(timedelta(milliseconds=999), 1, id="under-a-second-is-not-0"),
        pytest.param(timedelta(milliseconds=1), 1, id="a-millisecond-before"),
        pytest.param(timedelta(0), 0, id="due"),
        pytest.param(-timedelta(milliseconds=1), 0, id="just-past"),
        pytest.param(-timedelta(days=3), 0, id="long-past"),
        pytest.param(timedelta(days=365), 365 * 86400, id="a-year"),
    ],
)
@pytest.mark.parametrize("status", [S, Y])
def test_time_left_rounds_up_to_0_only_when_due(before_due: timedelta, left: int, status: Status) -> None:
    # Counted to the next attempt (due_at), not the expiry: a retry's wait is what is left.
    timer = make(status=status, due_at=NOW + timedelta(minutes=5))
    now = timer.due_at - before_due
    assert timer.time_left(now) == left
    assert timer.to_json(now)["timeLeft"] == left


@pytest.mark.parametrize("status", [R, F, X, C])
def test_time_left_of_a_timer_not_waiting_is_0(status: Status) -> None:
    timer = make(status=status)
    assert timer.time_left(timer.expiry_time - timedelta(hours=1)) == 0


@pytest.mark.parametrize(
    "timer",
    [
        pytest.param(make(), id="new"),
        pytest.param(
            make(
                status=X,
                payload={"deep": [1, {"x": None}], "s": "caf\u00e9"},
                attempts=8,
                fired_at=NOW,
                last_error="timeout",
                due_at=NOW + timedelta(seconds=30),
                ended_at=NOW + timedelta(seconds=31),
                delivery_count=12,
                revision=3,
                on_failure_url="https://ops.example.com/failed?x=1",
            ),
            id="failed-with-everything",
        ),
        pytest.param(make(status=Y, attempts=1, due_at=NOW + timedelta(seconds=2)), id="retry-due-later"),
        pytest.param(make(status=C, revision=2, ended_at=NOW), id="cancelled-after-changes"),
    ],
)
def test_record_round_trip(timer: Timer) -> None:
    record = timer.to_record()
    assert set(record) == RECORD_KEYS
    assert record["revision"] == timer.revision
    assert Timer.from_record(json.loads(json.dumps(record))) == timer


def test_from_record_accepts_public_json_and_defaults() -> None:
    timer = make(payload=[1])
    assert Timer.from_record(timer.to_json(NOW)) == timer
    minimal = {
        "timerId": "t-1",
        "webhookUrl": URL,
        "expiryTime": "2030-01-01T12:01:00Z",
        "createdAt": "2030-01-01T11:00Z",
    }
    assert Timer.from_record(minimal) == make()


def test_from_record_reads_a_record_written_before_revisions_and_deliveries() -> None:
    """A record queued by an older timerctl has none of a timer's later-life fields: they read as new."""
    record = make(status=S, attempts=1, due_at=NOW + timedelta(seconds=5)).to_record()
    for key in ("revision", "endedAt", "deliveryCount", "onFailureUrl", "nextAttemptAt"):
        del record[key]
    assert Timer.from_record(record) == make(status=S, attempts=1, due_at=NOW + timedelta(seconds=5))


GOOD_RECORD = make().to_record()


def bad(**changes: Any) -> dict[str, Any]:
    record = dict(GOOD_RECORD)
    for key, value in changes.items():
        if value is ...:
            del record[key]
        else:
            record[key] = value
    return record


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param([GOOD_RECORD], "must be a JSON object, got list", id="not-a-dict"),
        pytest.param(None, "must be a JSON object, got NoneType", id="null"),
        pytest.param(bad(timerId=...), "missing 'timerId'", id="no-id"),
        pytest.param(bad(webhookUrl=...), "missing 'webhookUrl'", id="no-url"),
        pytest.param(bad(expiryTime=...), "missing 'expiryTime'", id="no-expiry"),
        pytest.param(bad(createdAt=...), "missing 'createdAt'", id="no-created"),
        pytest.param(bad(timerId="a b"), "invalid timer id", id="bad-id"),
        pytest.param(bad(timerId=7), "invalid timer id", id="numeric-id"),
        pytest.param(bad(webhookUrl="ftp://x"), "http:// or https://", id="bad-url"),
        pytest.param(bad(webhookUrl=None), "empty", id="null-url"),
        pytest.param(bad(expiryTime="soon"), "invalid instant", id="bad-expiry"),
        pytest.param(bad(expiryTime="2030-01-01T00:00:00"), "no offset", id="naive-expiry"),
        pytest.param(bad(createdAt=12), "invalid instant", id="numeric-created"),
        pytest.param(bad(timerStatus="Done"), "bad value", id="bad-status"),
        pytest.param(bad(attempts=-1), "attempts must be a non-negative integer", id="negative-attempts"),
        pytest.param(bad(attempts="1"), "attempts must be a non-negative integer", id="string-attempts"),
        pytest.param(bad(attempts=True), "attempts must be a non-negative integer", id="bool-attempts"),
        pytest.param(bad(attempts=1.0), "attempts must be a non-negative integer", id="float-attempts"),
        pytest.param(bad(lastError=5), "lastError must be a string", id="numeric-error"),
        pytest.param(bad(firedAt="yesterday"), "invalid instant", id="bad-fired"),
        pytest.param(bad(dueAt="2030-01-01"), "no offset", id="naive-due"),
        pytest.param(bad(payload=float("inf")), "not JSON-serialisable", id="infinite-payload"),
        pytest.param(bad(payload="a" * MAX_PAYLOAD_BYTES), "at most 65536", id="payload-too-big"),
        pytest.param(bad(revision=-1), "revision must be a non-negative integer", id="negative-revision"),
        pytest.param(bad(revision=2**63), "revision must be a non-negative integer up to", id="huge-revision"),
        pytest.param(bad(deliveryCount="3"), "deliveryCount must be a non-negative integer", id="string-count"),
        pytest.param(bad(endedAt="yesterday"), "invalid instant", id="bad-ended"),
        pytest.param(bad(onFailureUrl="ftp://ops/x"), "http:// or https://", id="bad-failure-url"),
    ],
)
def test_from_record_rejects(data: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        Timer.from_record(data)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example/x?token=SECRET",
        "http://hooks.example/x?token=SECRET&next=a b",
        "http://hooks.example:99999/x?token=SECRET",
        "https:///x?token=SECRET",
        "hooks.example/x?token=SECRET",
        "http://hooks.example/x#SECRET\x00",
    ],
)
def test_url_errors_never_echo_the_query_string_or_fragment(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_url(url)
    assert "SECRET" not in str(info.value)
    assert "hooks.example" in str(info.value) or "no host" in str(info.value)


# --- attempts and outcomes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delivery",
    [
        pytest.param(Delivery(1, NOW, 12, 200, None, '{"ok":true}'), id="delivered"),
        pytest.param(Delivery(2, NOW + MS, 5000, 503, "HTTP 503", "busy ✓"), id="refused"),
        pytest.param(Delivery(8, NOW + timedelta(seconds=3), 10_000, None, "timed out after 10s"), id="no-answer"),
    ],
)
def test_delivery_json_round_trip(delivery: Delivery) -> None:
    data = delivery.to_json()
    assert set(data) == {"attempt", "at", "durationMs", "statusCode", "error", "response"}
    assert INSTANT_RE.fullmatch(data["at"])
    assert Delivery.from_json(json.loads(json.dumps(data))) == delivery


def test_delivery_json_form() -> None:
    assert Delivery(3, NOW + 7 * MS, 42, 500, "HTTP 500", "oops").to_json() == {
        "attempt": 3,
        "at": "2030-01-01T12:00:00.007Z",
        "durationMs": 42,
        "statusCode": 500,
        "error": "HTTP 500",
        "response": "oops",
    }


def test_outcome_apply_is_what_a_store_records() -> None:
    started = make(status=R, lease_owner="r1", lease_until=NOW + timedelta(seconds=30), delivery_count=4)
    retry = Outcome("t-1", Y, 2, last_error="HTTP 502", due_at=NOW + timedelta(seconds=9), delivery=Delivery(2, NOW, 3))
    assert retry.apply(started) == make(
        status=Y, attempts=2, last_error="HTTP 502", due_at=NOW + timedelta(seconds=9), delivery_count=5
    )
    keep_due = Outcome("t-1", Y, 2, last_error="HTTP 502")
    assert keep_due.apply(started).due_at == started.due_at, "a retry without a due time keeps the one it had"
    assert keep_due.apply(started).delivery_count == 4, "no attempt recorded, none counted"
    done = Outcome("t-1", F, 1, fired_at=NOW, ended_at=NOW + MS, delivery=Delivery(1, NOW, 1, 200))
    assert done.apply(started) == make(status=F, attempts=1, fired_at=NOW, ended_at=NOW + MS, delivery_count=5)
    with pytest.raises(ValueError, match="Scheduled -> Finished is not allowed"):
        done.apply(make())


# --- delays and instants a change may ask for -----------------------------------------------------------


@pytest.mark.parametrize("delay", [timedelta(0), timedelta(seconds=1), timedelta(days=365)])
def test_check_delay_accepts(delay: timedelta) -> None:
    assert check_delay(delay) == delay


@pytest.mark.parametrize(
    ("delay", "horizon", "fragment"),
    [
        pytest.param(-MS, DEFAULT_HORIZON, "is negative; expected 0s or more", id="negative"),
        pytest.param(timedelta(days=365, milliseconds=1), DEFAULT_HORIZON, "beyond the horizon", id="past-horizon"),
        pytest.param(timedelta(hours=2), timedelta(hours=1), "beyond the horizon of 1:00:00", id="own-horizon"),
    ],
)
def test_check_delay_rejects(delay: timedelta, horizon: timedelta, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        check_delay(delay, horizon)


def test_check_instant_accepts_now_and_later_in_utc() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    assert check_instant(NOW, NOW) == NOW
    at = check_instant(datetime(2030, 1, 1, 17, 31, 0, 500_999, tzinfo=ist), NOW)
    assert at == NOW + timedelta(minutes=1, milliseconds=500) and at.tzinfo is UTC
    assert check_instant(NOW + DEFAULT_HORIZON, NOW) == NOW + DEFAULT_HORIZON


@pytest.mark.parametrize(
    ("at", "fragment"),
    [
        pytest.param(NOW - MS, "instant 2030-01-01T11:59:59.999Z is in the past; expected now or later", id="past"),
        pytest.param(NOW + DEFAULT_HORIZON + MS, "is beyond the horizon of 365 days", id="past-horizon"),
    ],
)
def test_check_instant_rejects(at: datetime, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        check_instant(at, NOW)

"""Specs, what a create asks for: built from CLI options or a JSON object (``spec.py``), checked and resolved
into a timer (``model.TimerSpec``), and held to one payload rule whichever way they come in; updates and
retries, read by the same code against a given now; a timer's detailed JSON with its deliveries.

One place decides which combinations are legal, so the CLI, the bulk import and the HTTP API reject the same
inputs with the same messages. The payload rule on every path: the compact JSON encoding may be 64 KiB;
raw text is read up to 1 MiB only. Whitespace is not payload: pretty-printed JSON over 64 KiB whose compact
form fits is accepted, and a payload whose compact form is over 64 KiB is refused with the same message
whether it came from ``--payload``, ``--payload @file``, a ``--from-file`` line, the HTTP API or a Kafka
record. Every instant of the pure tests is fixed (``NOW``).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from tests.factories import MAX_PAYLOAD_TEXT_BYTES, make_timer, settings_for
from tests.fixtures_cli import Cli
from timerctl.api import create_app
from timerctl.attempts import Delivery
from timerctl.changes import Update
from timerctl.model import DEFAULT_HORIZON, MAX_PAYLOAD_BYTES, InvalidInput, Status, TimerSpec
from timerctl.queue.kafka import decode
from timerctl.service import TimerService
from timerctl.spec import (
    build_spec,
    build_update,
    detail_json,
    retry_from_mapping,
    retry_instant,
    spec_from_mapping,
    update_from_mapping,
)

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
URL = "https://hooks.example.com/fire"
PARIS = ZoneInfo("Europe/Paris")
S = Status.SCHEDULED


# --- TimerSpec -------------------------------------------------------------------------------------------

SMALL_HORIZON = timedelta(minutes=10)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(TimerSpec(URL, delay=timedelta(0)), id="zero-delay"),
        pytest.param(TimerSpec(URL, delay=SMALL_HORIZON), id="delay-exactly-horizon"),
        pytest.param(TimerSpec(URL, expiry_time=NOW), id="at-now"),
        pytest.param(TimerSpec(URL, expiry_time=NOW + SMALL_HORIZON), id="at-exactly-horizon"),
        pytest.param(TimerSpec(URL, delay=timedelta(seconds=1), timer_id="x" * 128), id="id-128"),
        pytest.param(TimerSpec(URL, delay=timedelta(seconds=1), payload={"k": "v"}), id="payload"),
    ],
)
def test_spec_validate_accepts(spec: TimerSpec) -> None:
    spec.validate(NOW, SMALL_HORIZON)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        pytest.param(TimerSpec(URL), "exactly one", id="no-time"),
        pytest.param(
            TimerSpec(URL, expiry_time=NOW, delay=timedelta(seconds=1)), "exactly one", id="both-delay-and-instant"
        ),
        pytest.param(TimerSpec(URL, delay=-MS), "negative", id="negative-delay"),
        pytest.param(TimerSpec(URL, delay=SMALL_HORIZON + MS), "beyond the horizon", id="delay-past-horizon"),
        pytest.param(TimerSpec(URL, expiry_time=NOW - MS), "in the past", id="at-1ms-ago"),
        pytest.param(TimerSpec(URL, expiry_time=NOW + SMALL_HORIZON + MS), "beyond the horizon", id="at-past-horizon"),
        pytest.param(TimerSpec("ftp://example.com", delay=timedelta(0)), "http:// or https://", id="bad-url"),
        pytest.param(TimerSpec(URL, delay=timedelta(0), timer_id="x" * 129), "1-128 characters", id="id-129"),
        pytest.param(TimerSpec(URL, delay=timedelta(0), timer_id=""), "1-128 characters", id="empty-id"),
        pytest.param(
            TimerSpec(URL, delay=timedelta(0), payload="a" * MAX_PAYLOAD_BYTES), "at most 65536", id="payload-too-big"
        ),
    ],
)
def test_spec_validate_rejects(spec: TimerSpec, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        spec.validate(NOW, SMALL_HORIZON)
    with pytest.raises(InvalidInput, match=fragment):
        spec.resolve(NOW, SMALL_HORIZON)


def test_default_horizon_is_365_days() -> None:
    TimerSpec(URL, delay=timedelta(days=365)).validate(NOW)
    with pytest.raises(InvalidInput, match="horizon"):
        TimerSpec(URL, delay=timedelta(days=365) + MS).validate(NOW)
    assert timedelta(days=365) == DEFAULT_HORIZON


def test_resolve_delay_truncates_to_ms_and_generates_uuid4() -> None:
    now = NOW + timedelta(microseconds=123_456)
    timer = TimerSpec(URL, delay=timedelta(seconds=90), payload={"a": 1}).resolve(now)
    assert timer.created_at == NOW + timedelta(milliseconds=123)
    assert timer.expiry_time == timer.due_at == NOW + timedelta(seconds=90, milliseconds=123)
    assert (timer.status, timer.attempts, timer.payload, timer.webhook_url) == (S, 0, {"a": 1}, URL)
    assert uuid.UUID(timer.timer_id).version == 4


@pytest.mark.parametrize(
    ("timer_id", "new_id", "expected"),
    [
        pytest.param("mine", None, "mine", id="given-id"),
        pytest.param("mine", "generated", "mine", id="given-id-beats-new-id"),
        pytest.param(None, "generated", "generated", id="new-id"),
    ],
)
def test_resolve_ids(timer_id: str | None, new_id: str | None, expected: str) -> None:
    spec = TimerSpec(URL, expiry_time=NOW + timedelta(hours=1), timer_id=timer_id)
    timer = spec.resolve(NOW, new_id=new_id)
    assert (timer.timer_id, timer.expiry_time) == (expected, NOW + timedelta(hours=1))


STORED = TimerSpec(URL, delay=timedelta(seconds=90), payload={"a": 1, "b": [1, 2]}, timer_id="job").resolve(NOW)


@pytest.mark.parametrize(
    ("spec", "matches"),
    [
        pytest.param(TimerSpec(URL, delay=timedelta(seconds=90), payload={"a": 1, "b": [1, 2]}), True, id="same-in"),
        pytest.param(
            TimerSpec(URL, expiry_time=NOW + timedelta(seconds=90), payload={"a": 1, "b": [1, 2]}),
            True,
            id="same-instant",
        ),
        pytest.param(
            TimerSpec(URL, delay=timedelta(seconds=90), payload={"b": [1, 2], "a": 1}), True, id="key-order-ignored"
        ),
        pytest.param(
            TimerSpec(URL + "x", delay=timedelta(seconds=90), payload={"a": 1, "b": [1, 2]}), False, id="other-url"
        ),
        pytest.param(TimerSpec(URL, delay=timedelta(seconds=91), payload={"a": 1, "b": [1, 2]}), False, id="other-in"),
        pytest.param(
            TimerSpec(URL, expiry_time=NOW + timedelta(seconds=91), payload={"a": 1, "b": [1, 2]}),
            False,
            id="other-instant",
        ),
        pytest.param(TimerSpec(URL, delay=timedelta(seconds=90), payload={"a": 2, "b": [1, 2]}), False, id="payload"),
        pytest.param(
            TimerSpec(URL, delay=timedelta(seconds=90), payload={"a": 1, "b": [2, 1]}), False, id="list-order"
        ),
        pytest.param(
            TimerSpec(URL, delay=timedelta(seconds=90), payload={"a": True, "b": [1, 2]}), False, id="true-is-not-1"
        ),
        pytest.param(TimerSpec(URL, delay=timedelta(seconds=90)), False, id="no-payload"),
    ],
)
def test_spec_matches(spec: TimerSpec, matches: bool) -> None:
    # The later clock of a retried create must not matter: matching compares against the stored timer only.
    assert spec.matches(STORED) is matches


# --- building specs from CLI options and JSON objects ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"delay": "90s"}, TimerSpec(URL, delay=timedelta(seconds=90)), id="in"),
        pytest.param(
            {"at": "2030-01-01T13:00:00"}, TimerSpec(URL, expiry_time=datetime(2030, 1, 1, 12, tzinfo=UTC)), id="at"
        ),
        pytest.param({"hours": 1, "minutes": 59}, TimerSpec(URL, delay=timedelta(hours=1, minutes=59)), id="hms"),
        pytest.param({"seconds": 0}, TimerSpec(URL, delay=timedelta(0)), id="hms-zero"),
        pytest.param(
            {"delay": "0s", "payload": [1], "timer_id": "k"},
            TimerSpec(URL, delay=timedelta(0), payload=[1], timer_id="k"),
            id="payload-and-id",
        ),
    ],
)
def test_build_spec(kwargs: dict[str, Any], expected: TimerSpec) -> None:
    assert build_spec(URL, PARIS, **kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({}, "exactly one", id="no-time-form"),
        pytest.param({"delay": "1s", "at": "2030-01-01T00:00:00Z"}, "exactly one", id="in-and-at"),
        pytest.param({"delay": "1s", "seconds": 1}, "exactly one", id="in-and-hms"),
        pytest.param({"delay": "-5s"}, "negative", id="negative-in"),
        pytest.param({"at": "later"}, "invalid time", id="bad-at"),
        pytest.param({"minutes": 60}, "minutes must be 0-59", id="minutes-60"),
        pytest.param({"hours": 1.5}, "hours must be an integer", id="float-hours"),
        pytest.param({"seconds": True}, "seconds must be an integer", id="bool-seconds"),
    ],
)
def test_build_spec_rejects(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        build_spec(URL, PARIS, **kwargs)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({"url": URL, "in": "90s"}, TimerSpec(URL, delay=timedelta(seconds=90)), id="short-names"),
        pytest.param(
            {"webhookUrl": URL, "expiryTime": "2030-01-01T12:00:00Z", "timerId": "k", "payload": {"a": 1}},
            TimerSpec(URL, expiry_time=NOW, timer_id="k", payload={"a": 1}),
            id="old-service-names",
        ),
        pytest.param(
            {"url": URL, "hours": 0, "minutes": 1}, TimerSpec(URL, delay=timedelta(minutes=1)), id="hms-fields"
        ),
    ],
)
def test_spec_from_mapping(data: dict[str, Any], expected: TimerSpec) -> None:
    assert spec_from_mapping(data, PARIS) == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param([1], "must be a JSON object", id="not-an-object"),
        pytest.param({"url": URL, "in": "1s", "colour": "red"}, "unknown field 'colour'", id="unknown-field"),
        pytest.param({"in": "1s"}, "missing webhook URL", id="no-url"),
        pytest.param({"url": URL, "webhookUrl": URL, "in": "1s"}, "not both", id="url-twice"),
        pytest.param({"url": URL, "in": 90}, "field 'in' must be a string", id="in-not-a-string"),
        pytest.param({"url": 5, "in": "1s"}, "field 'url' must be a string", id="url-not-a-string"),
        pytest.param({"url": URL, "minutes": "5"}, "minutes must be an integer", id="minutes-string"),
    ],
)
def test_spec_from_mapping_rejects(data: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        spec_from_mapping(data, PARIS)


def test_spec_from_mapping_takes_a_failure_callback() -> None:
    spec = spec_from_mapping({"url": URL, "in": "1s", "onFailureUrl": URL + "/failed"}, PARIS)
    assert spec == TimerSpec(URL, delay=timedelta(seconds=1), on_failure_url=URL + "/failed")
    assert build_spec(URL, PARIS, delay="1s", on_failure_url=URL + "/failed") == spec


# --- updates and retries: the same time forms, resolved against a given now -----------------------------

HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"delay": "90s"}, Update(expiry_time=NOW + timedelta(seconds=90)), id="in"),
        pytest.param({"delay": "0s"}, Update(expiry_time=NOW), id="in-0s"),
        pytest.param({"at": "2030-01-01T14:00:00"}, Update(expiry_time=NOW + HOUR), id="at-paris"),
        pytest.param({"hours": 1, "seconds": 5}, Update(expiry_time=NOW + timedelta(hours=1, seconds=5)), id="hms"),
        pytest.param({"url": URL + "/2"}, Update(webhook_url=URL + "/2"), id="url"),
        pytest.param({"payload": None}, Update(payload=None), id="payload-none"),
        pytest.param({"payload": {"a": 1}}, Update(payload={"a": 1}), id="payload"),
        pytest.param({"on_failure_url": None}, Update(on_failure_url=None), id="callback-removed"),
        pytest.param({}, Update(), id="nothing"),
    ],
)
def test_build_update(kwargs: dict[str, Any], expected: Update) -> None:
    assert build_update(PARIS, NOW + timedelta(microseconds=400), **kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"delay": "1s", "at": "2030-01-01T14:00:00Z"}, "give at most one of --in", id="in-and-at"),
        pytest.param({"delay": "1s", "minutes": 1}, "give at most one of --in", id="in-and-hms"),
        pytest.param({"delay": "-1s"}, "negative", id="negative"),
        pytest.param({"delay": "11m"}, "beyond the horizon of 0:10:00", id="beyond-horizon"),
        pytest.param({"at": "2030-01-01T11:59:59Z"}, "is in the past", id="at-in-past"),
        pytest.param({"at": "2030-01-01T12:10:00.001Z"}, "beyond the horizon", id="at-beyond-horizon"),
        pytest.param({"seconds": 60}, "seconds must be 0-59", id="seconds-60"),
        pytest.param({"minutes": 1.5}, "minutes must be an integer", id="float-minutes"),
        pytest.param({"url": "ftp://example.com"}, "http:// or https://", id="bad-url"),
        pytest.param({"on_failure_url": "/relative"}, "http:// or https://", id="bad-callback"),
        pytest.param({"payload": "a" * MAX_PAYLOAD_BYTES}, "at most 65536", id="payload-too-big"),
    ],
)
def test_build_update_rejects(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        build_update(PARIS, NOW, SMALL_HORIZON, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"delay": "soon"}, id="garbage-in"),
        pytest.param({"delay": "5m1h"}, id="misordered"),
        pytest.param({"at": "tomorrow"}, id="garbage-at"),
        pytest.param({"at": "2000-01-01T00:00:00Z"}, id="past"),
        pytest.param({"minutes": 60}, id="minutes-60"),
        pytest.param({"hours": -1}, id="negative-hours"),
    ],
)
def test_an_update_and_a_create_refuse_a_time_with_the_same_message(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as as_update:
        build_update(PARIS, NOW, **kwargs)
    with pytest.raises(InvalidInput) as as_create:
        build_spec(URL, PARIS, **kwargs).validate(NOW)
    assert str(as_update.value) == str(as_create.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({"in": "90s"}, Update(expiry_time=NOW + timedelta(seconds=90)), id="in"),
        pytest.param({"expiryTime": "2030-01-01T13:00:00Z"}, Update(expiry_time=NOW + HOUR), id="expiry-time"),
        pytest.param({"hours": 0, "minutes": 1}, Update(expiry_time=NOW + timedelta(minutes=1)), id="hms"),
        pytest.param({"webhookUrl": URL + "/2"}, Update(webhook_url=URL + "/2"), id="webhook-url"),
        pytest.param({"payload": None}, Update(payload=None), id="payload-null"),
        pytest.param({"onFailureUrl": None}, Update(on_failure_url=None), id="callback-null"),
        pytest.param({"onFailureUrl": URL}, Update(on_failure_url=URL), id="callback"),
        pytest.param({"timerId": "job", "url": URL}, Update(webhook_url=URL), id="same-id"),
    ],
)
def test_update_from_mapping(data: dict[str, Any], expected: Update) -> None:
    assert update_from_mapping(data, PARIS, NOW, timer_id="job") == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param([1], "an update must be a JSON object, got list", id="not-an-object"),
        pytest.param({}, "nothing to change; give any of at, expiryTime, hours", id="empty"),
        pytest.param({"in": None}, "nothing to change", id="only-a-null-time"),
        pytest.param({"payload": {1, 2}}, "payload is not JSON-serialisable", id="not-json"),
        pytest.param({"url": None}, "the webhook URL cannot be removed", id="url-null"),
        pytest.param({"id": "other", "in": "1s"}, "the timer updated is 'job'; ids cannot change", id="other-id"),
        pytest.param({"colour": "red"}, "unknown field 'colour'", id="unknown-field"),
        pytest.param({"at": "x", "expiryTime": "y"}, "give either 'at' or 'expiryTime', not both", id="at-twice"),
        pytest.param({"in": 5}, "field 'in' must be a string, got int", id="in-int"),
        pytest.param({"onFailureUrl": 5}, "field 'onFailureUrl' must be a string, got int", id="callback-int"),
    ],
)
def test_update_from_mapping_rejects(data: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        update_from_mapping(data, PARIS, NOW, timer_id="job")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, None, id="now"),
        pytest.param({"delay": "0s"}, None, id="in-0s"),
        pytest.param({"delay": "10m"}, NOW + timedelta(minutes=10), id="in"),
        pytest.param({"at": "2030-01-01T13:30:00"}, NOW + timedelta(minutes=30), id="at-paris"),
    ],
)
def test_retry_instant(kwargs: dict[str, Any], expected: datetime | None) -> None:
    assert retry_instant(PARIS, NOW, **kwargs) == expected
    data = {"in": kwargs["delay"]} if "delay" in kwargs else {"at": kwargs["at"]} if "at" in kwargs else {}
    assert retry_from_mapping(data, PARIS, NOW) == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param({"in": "1s", "at": "2030-01-01T14:00:00Z"}, "give at most one of --in", id="both"),
        pytest.param({"in": "11m"}, "beyond the horizon", id="beyond-horizon"),
        pytest.param({"at": "2030-01-01T11:00:00Z"}, "is in the past", id="past"),
        pytest.param({"in": "-1s"}, "negative", id="negative"),
        pytest.param({"hours": 1}, "unknown field 'hours'; accepted: at, in", id="unknown-field"),
        pytest.param({"at": 5}, "field 'at' must be a string, got int", id="at-int"),
        pytest.param("soon", "a retry must be a JSON object, got str", id="not-an-object"),
    ],
)
def test_retry_from_mapping_rejects(data: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        retry_from_mapping(data, PARIS, NOW, SMALL_HORIZON)
    assert retry_from_mapping(None, PARIS, NOW) is None


def test_detail_json_counts_the_attempts_no_longer_kept() -> None:
    timer = make_timer("job", NOW, now=NOW - HOUR, status=Status.FAILED, attempts=25, delivery_count=25)
    kept = [Delivery(n, NOW, 10, 500, "HTTP 500") for n in range(6, 26)]
    detail = detail_json(timer, kept, NOW)
    assert detail == {**timer.to_json(NOW), "deliveries": [d.to_json() for d in kept], "deliveriesOmitted": 5}
    assert detail_json(timer.move(Status.SCHEDULED, delivery_count=0), [], NOW)["deliveriesOmitted"] == 0


# --- the payload rule on every path -------------------------------------------------------------------

PAYLOAD_URL = "https://hooks.example.com/p"
#: Compact: 6,000 strings of 9 letters, quoted and comma-separated: 6000 * 12 + 1 = 72,001 bytes (> 64 KiB).
OVER = ["abcdefghi"] * 6000
#: Compact: 5,000 of them: 60,001 bytes (fits); pretty-printed with indent=4 it is over 100 KiB.
FITS = ["abcdefghi"] * 5000


def pretty(payload: Any) -> str:
    return json.dumps(payload, indent=4)


def compact_size(payload: Any) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())


def test_the_sizes_are_what_the_tests_need() -> None:
    assert compact_size(FITS) <= MAX_PAYLOAD_BYTES < len(pretty(FITS).encode()) < MAX_PAYLOAD_TEXT_BYTES
    assert compact_size(OVER) > MAX_PAYLOAD_BYTES


def via_cli_text(cli: Cli, tmp_path: Path, payload: Any) -> str | None:
    code, out, err = cli("create", "--url", PAYLOAD_URL, "--in", "1h", "--payload", pretty(payload), "--json")
    return None if code == 0 and json.loads(out)["payload"] == payload else err


def via_cli_file(cli: Cli, tmp_path: Path, payload: Any) -> str | None:
    (tmp_path / "payload.json").write_text(pretty(payload), encoding="utf-8")
    code, out, err = cli(
        "create", "--url", PAYLOAD_URL, "--in", "1h", "--payload", f"@{tmp_path / 'payload.json'}", "--json"
    )
    return None if code == 0 and json.loads(out)["payload"] == payload else err


def via_from_file(cli: Cli, tmp_path: Path, payload: Any) -> str | None:
    # One line, but spaced out: the line's text is far larger than the payload's compact form.
    line = json.dumps({"url": PAYLOAD_URL, "in": "1h", "payload": payload}, separators=(" ,    ", " :  "))
    (tmp_path / "specs.jsonl").write_text(line + "\n", encoding="utf-8")
    code, out, _ = cli("create", "--from-file", str(tmp_path / "specs.jsonl"))
    result = json.loads(out)
    return None if code == 0 and result["payload"] == payload else result["error"]


def via_api(cli: Cli, tmp_path: Path, payload: Any) -> str | None:
    settings = settings_for(tmp_path, db=str(tmp_path / "api.db"))
    with TimerService(settings) as service, TestClient(create_app(settings, service)) as client:
        body = json.dumps({"webhookUrl": PAYLOAD_URL, "seconds": 30, "payload": payload}, indent=4)
        response = client.post("/v1/timer", content=body, headers={"content-type": "application/json"})
        if response.status_code == 201:
            assert service.get(response.json()["timer"]["timerId"]).payload == payload
            return None
    assert response.status_code == 400, response.text
    message: str = response.json()["message"]
    return message


def via_kafka_record(cli: Cli, tmp_path: Path, payload: Any) -> str | None:
    record = make_timer("k", url=PAYLOAD_URL).to_record() | {"payload": payload}
    try:
        message = decode(json.dumps({"v": 1, "op": "create", "timer": record}, indent=4).encode())
    except InvalidInput as exc:
        return str(exc)
    assert message.timer is not None and message.timer.payload == payload
    return None


PATHS = [via_cli_text, via_cli_file, via_from_file, via_api, via_kafka_record]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
def test_pretty_json_whose_compact_form_fits_is_accepted(cli: Cli, tmp_path: Path, path: Any) -> None:
    assert path(cli, tmp_path, FITS) is None


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
def test_a_compact_form_over_64KiB_is_refused_with_the_same_message(cli: Cli, tmp_path: Path, path: Any) -> None:
    refused = path(cli, tmp_path, OVER)
    assert refused is not None
    size = compact_size(OVER)
    expected = f"payload is {size} bytes as compact JSON, over {MAX_PAYLOAD_BYTES} bytes; at most 65536 (64 KiB)"
    assert expected in refused

"""Specs, what a create asks for: built from CLI options or a JSON object (``spec.py``), checked and resolved
into a timer (``model.TimerSpec``), and held to one payload rule whichever way they come in.

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
from timerctl.model import DEFAULT_HORIZON, MAX_PAYLOAD_BYTES, InvalidInput, Status, TimerSpec
from timerctl.queue.kafka import decode
from timerctl.service import TimerService
from timerctl.spec import build_spec, spec_from_mapping

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

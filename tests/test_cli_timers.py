"""``timerctl create``, ``get``, ``list`` and ``cancel`` (``cli/timers.py``), in-process on a throw-away SQLite file.

Each rejected input must give its exit code, exactly one ``error:`` line on stderr, nothing on stdout and
nothing stored. Timers in other statuses are set up through the SqliteStore with fixed instants.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.factories import (
    INSTANT_RE,
    MAX_PAYLOAD_TEXT_BYTES,
    json_string_of_bytes,
    make_timer,
    url_of_length,
)
from tests.fixtures_cli import DETAIL_KEYS, TIMER_KEYS, Cli, assert_rejected, attempt, running
from tests.fixtures_stores import corrupt
from timerctl.cli import timers as timers_cli
from timerctl.model import MAX_PAYLOAD_BYTES, MAX_URL_LENGTH, Status
from timerctl.stores.sqlite import SqliteStore

URL = "https://hooks.example.com/fire"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
#: The URL of the payload-limit tests.
PAYLOAD_URL = "https://hooks.example.com/p"

pytestmark = pytest.mark.usefixtures("wide_terminal")


def seed(db: Path, timer_id: str, status: Status) -> None:
    """Store a timer in ``status`` the way the runner (or a cancel) would put it there: insert, then claim,
    start and record an attempt (``tests/fixtures_cli.attempt``)."""
    store = SqliteStore(str(db))
    try:
        store.insert(make_timer(timer_id, T0, url=URL, created_at=T0 - timedelta(hours=1)))
        if status is Status.CANCELLED:
            store.cancel(timer_id, T0 - timedelta(minutes=1))
        elif status is Status.RUNNING:
            running(store, timer_id, T0)
        elif status is not Status.SCHEDULED:
            code = {Status.FINISHED: 200, Status.FAILED: 500, Status.RETRYING: 503}[status]
            attempt(store, timer_id, status, T0, code=code, retry_at=T0 + timedelta(minutes=1))
        stored = store.get(timer_id)
        assert stored is not None and stored.status is status
    finally:
        store.close()


def future(delta: timedelta) -> str:
    """An instant ``delta`` from the real now, for the CLI (which reads the real clock)."""
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- create: every rejected input ----------------------------------------------------------------------

REJECTED_CREATES = [
    # time forms
    pytest.param(["--url", URL], "exactly one of --in", id="no-time-form"),
    pytest.param(["--url", URL, "--in", "1s", "--at", "2030-01-01T00:00:00Z"], "exactly one", id="in-and-at"),
    pytest.param(["--url", URL, "--in", "1s", "--seconds", "1"], "exactly one", id="in-and-hms"),
    pytest.param(["--in", "90s"], "missing --url", id="no-url"),
    pytest.param(["--url", URL, "--in=-5s"], "negative", id="negative-in"),
    pytest.param(["--url", URL, "--in", "5m1h"], "largest first", id="misordered-units"),
    pytest.param(["--url", URL, "--in", "1h1h"], "largest first", id="repeated-unit"),
    pytest.param(["--url", URL, "--in", "soon"], "invalid duration", id="garbage-in"),
    pytest.param(["--url", URL, "--in", "366d"], "beyond the horizon", id="in-past-default-horizon"),
    pytest.param(["--url", URL, "--in", "99999999999999999"], "too large", id="in-overflow"),
    pytest.param(["--url", URL, "--at", "2000-01-01T00:00:00Z"], "in the past", id="at-in-past"),
    pytest.param(["--url", URL, "--at", "tomorrow"], "invalid time", id="garbage-at"),
    pytest.param(["--url", URL, "--at", "9000-01-01T00:00:00Z"], "beyond the horizon", id="at-past-horizon"),
    pytest.param(["--url", URL, "--at", "9999-12-31T23:59:59-01:00"], "out of range", id="at-overflow"),
    pytest.param(["--url", URL, "--hours", "1.5"], "--hours must be an integer, got '1.5'", id="fractional-hours"),
    pytest.param(["--url", URL, "--hours", "x"], "--hours must be an integer, got 'x'", id="non-integer-hours"),
    pytest.param(["--url", URL, "--minutes", "ten"], "--minutes must be an integer", id="non-integer-minutes"),
    pytest.param(["--url", URL, "--seconds", ""], "--seconds must be an integer", id="empty-seconds"),
    pytest.param(["--url", URL, "--hours=-1"], "hours must be 0 or more", id="negative-hours"),
    pytest.param(["--url", URL, "--minutes", "60"], "minutes must be 0-59, got 60", id="minutes-60"),
    pytest.param(["--url", URL, "--minutes=-1"], "minutes must be 0-59", id="negative-minutes"),
    pytest.param(["--url", URL, "--seconds", "60"], "seconds must be 0-59, got 60", id="seconds-60"),
    pytest.param(["--url", URL, "--hours", "9000"], "beyond the horizon", id="hours-past-horizon"),
    pytest.param(["--url", URL, "--hours", "1000000000000"], "too large", id="hours-overflow"),
    # URLs
    pytest.param(["--url", "ftp://example.com/x", "--in", "1s"], "http:// or https://", id="ftp-url"),
    pytest.param(["--url", "example.com/x", "--in", "1s"], "http:// or https://", id="relative-url"),
    pytest.param(["--url", "http://user:pw@example.com/", "--in", "1s"], "credentials", id="url-with-password"),
    pytest.param(["--url", "http:///path", "--in", "1s"], "has no host", id="url-without-host"),
    pytest.param(["--url", "http://example.com/a\r\nX: 1", "--in", "1s"], "control characters", id="url-crlf"),
    pytest.param(["--url", "http://example.com/a\nb", "--in", "1s"], "control characters", id="url-lf"),
    pytest.param(["--url", "http://example.com/a\rb", "--in", "1s"], "control characters", id="url-cr"),
    pytest.param(["--url", url_of_length(MAX_URL_LENGTH + 1), "--in", "1s"], "2049 characters", id="url-2049"),
    pytest.param(["--url", "", "--in", "1s"], "empty", id="empty-url"),
    pytest.param(["--url", "http://example.com:99999/", "--in", "1s"], "invalid webhook URL", id="url-bad-port"),
    # payloads
    pytest.param(["--url", URL, "--in", "1s", "--payload", "{"], "not valid JSON", id="invalid-json"),
    pytest.param(["--url", URL, "--in", "1s", "--payload", "{'a': 1}"], "not valid JSON", id="single-quoted-json"),
    pytest.param(["--url", URL, "--in", "1s", "--payload", "NaN"], "not JSON-serialisable", id="nan-payload"),
    pytest.param(["--url", URL, "--in", "1s", "--payload", '"\\ud800"'], "not JSON-serialisable", id="lone-surrogate"),
    pytest.param(
        ["--url", URL, "--in", "1s", "--payload", "[" * 20_000 + "]" * 20_000], "nested too deeply", id="deep-json"
    ),
    pytest.param(
        ["--url", URL, "--in", "1s", "--payload", json_string_of_bytes(MAX_PAYLOAD_BYTES + 1)],
        "over 65536 bytes",
        id="payload-64KiB-plus-1",
    ),
    pytest.param(["--url", URL, "--in", "1s", "--payload", "@missing.json"], "cannot read payload file", id="no-file"),
    # ids
    pytest.param(["--url", URL, "--in", "1s", "--id", "x" * 129], "invalid timer id", id="id-129"),
    pytest.param(["--url", URL, "--in", "1s", "--id", ""], "invalid timer id", id="empty-id"),
    pytest.param(["--url", URL, "--in", "1s", "--id", "a b"], "invalid timer id", id="id-with-space"),
    pytest.param(["--url", URL, "--in", "1s", "--id", "a/b"], "invalid timer id", id="id-with-slash"),
    # option parsing
    pytest.param(["--url", URL, "--in"], "requires an argument", id="option-without-value"),
    pytest.param(["--url", URL, "--in", "1s", "--bogus"], "No such option: --bogus", id="unknown-option"),
    pytest.param(["--url", URL, "--from-file", "x.jsonl"], "--from-file takes every field", id="from-file-and-url"),
]


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize(("args", "fragment"), REJECTED_CREATES)
def test_create_rejects(cli: Cli, args: list[str], fragment: str, as_json: bool) -> None:
    result = cli("create", *(["--json"] if as_json else []), *args)
    assert_rejected(result, 2, fragment)
    assert cli.stored() == []


def test_create_rejects_payload_file_over_64KiB(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "big.json").write_text(json_string_of_bytes(MAX_PAYLOAD_BYTES + 1), encoding="utf-8")
    assert_rejected(cli("create", "--url", URL, "--in", "1s", "--payload", "@big.json"), 2, "over 65536 bytes")
    assert cli.stored() == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"{", "not valid JSON", id="invalid-json"),
        pytest.param(b"\xff\xfe{}", "cannot read payload file", id="not-utf8"),
    ],
)
def test_create_rejects_bad_payload_file(cli: Cli, tmp_path: Path, content: bytes, fragment: str) -> None:
    (tmp_path / "p.json").write_bytes(content)
    assert_rejected(cli("create", "--url", URL, "--in", "1s", "--payload", "@p.json"), 2, fragment)
    assert cli.stored() == []


# --- create: boundaries that are accepted --------------------------------------------------------------

ACCEPTED_CREATES = [
    pytest.param(["--in", "0s"], 0, id="zero-delay"),
    pytest.param(["--in", "0"], 0, id="zero-bare"),
    pytest.param(["--in", "90s"], 90, id="90s"),
    pytest.param(["--in", "1h2m3.5s"], 3723.5, id="compound"),
    pytest.param(["--in", "15"], 15, id="bare-seconds"),
    pytest.param(["--minutes", "59"], 59 * 60, id="minutes-59"),
    pytest.param(["--seconds", "59"], 59, id="seconds-59"),
    pytest.param(["--hours", "1", "--minutes", "2", "--seconds", "3"], 3723, id="hms"),
    pytest.param(["--hours", "0", "--minutes", "0", "--seconds", "0"], 0, id="hms-zero"),
    pytest.param(["--in", "365d"], 365 * 86400, id="exactly-default-horizon"),
]


@pytest.mark.parametrize(("args", "seconds"), ACCEPTED_CREATES)
def test_create_accepts(cli: Cli, args: list[str], seconds: float) -> None:
    data = cli.ok_json("create", "--url", URL, *args)
    expiry = datetime.fromisoformat(data["expiryTime"])
    created = datetime.fromisoformat(data["createdAt"])
    assert expiry - created == timedelta(seconds=seconds)
    assert [t.timer_id for t in cli.stored()] == [data["timerId"]]


@pytest.mark.parametrize(
    ("args", "check"),
    [
        pytest.param(["--url", url_of_length(MAX_URL_LENGTH)], "webhookUrl", id="url-2048"),
        pytest.param(["--url", URL, "--id", "x" * 128], "timerId", id="id-128"),
        pytest.param(["--url", URL, "--id", "Job_1.retry:2-b"], "timerId", id="id-punctuation"),
        pytest.param(
            ["--url", URL, "--payload", json_string_of_bytes(MAX_PAYLOAD_BYTES)], "payload", id="payload-exactly-64KiB"
        ),
        pytest.param(["--url", "HTTP://EXAMPLE.COM/x"], "webhookUrl", id="upper-case-scheme"),
    ],
)
def test_create_accepts_boundaries(cli: Cli, args: list[str], check: str) -> None:
    given = dict(zip(args[::2], args[1::2], strict=True))
    data = cli.ok_json("create", "--in", "1s", *args)
    expected = {"webhookUrl": given["--url"], "timerId": given.get("--id"), "payload": None}[check]
    if check == "payload":
        expected = json.loads(given["--payload"])
    assert data[check] == expected
    [stored] = cli.stored()
    assert stored.to_json(T0)[check] == expected


def test_create_accepts_payload_file_of_exactly_64KiB(cli: Cli, tmp_path: Path) -> None:
    text = json_string_of_bytes(MAX_PAYLOAD_BYTES)
    (tmp_path / "big.json").write_text(text, encoding="utf-8")
    assert len((tmp_path / "big.json").read_bytes()) == MAX_PAYLOAD_BYTES
    data = cli.ok_json("create", "--url", URL, "--in", "1s", "--payload", "@big.json")
    assert data["payload"] == json.loads(text)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["--in", "60s"], None, id="in-exactly-horizon"),
        pytest.param(["--minutes", "1"], None, id="hms-exactly-horizon"),
        pytest.param(["--in", "0s"], None, id="zero"),
        pytest.param(["--in", "61s"], "beyond the horizon", id="in-1s-over"),
        pytest.param(["--in", "60.001s"], "beyond the horizon", id="in-1ms-over"),
        pytest.param(["--minutes", "1", "--seconds", "1"], "beyond the horizon", id="hms-1s-over"),
        pytest.param(["--at", future(timedelta(hours=1))], "beyond the horizon", id="at-an-hour-out"),
    ],
)
def test_create_with_small_horizon(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, args: list[str], fragment: str | None
) -> None:
    monkeypatch.setenv("TIMERCTL_MAX_HORIZON", "1m")
    result = cli("create", "--url", URL, *args, "--json")
    if fragment is None:
        assert (result.code, result.err) == (0, "")
        assert len(cli.stored()) == 1
    else:
        assert_rejected(result, 2, fragment)
        assert cli.stored() == []


def test_create_json_is_one_object_and_nothing_else(cli: Cli) -> None:
    result = cli("create", "--url", URL, "--in", "90s", "--payload", '{"order": 42, "tags": ["a"]}', "--json")
    assert (result.code, result.err) == (0, "")
    assert result.out.count("\n") == 1 and result.out.endswith("\n")
    data = result.json
    assert isinstance(data, dict) and set(data) == TIMER_KEYS
    assert uuid.UUID(data["timerId"]).version == 4
    assert data["webhookUrl"] == URL
    assert INSTANT_RE.fullmatch(data["expiryTime"]) and INSTANT_RE.fullmatch(data["createdAt"])
    assert datetime.fromisoformat(data["expiryTime"]) - datetime.fromisoformat(data["createdAt"]) == timedelta(
        seconds=90
    )
    assert 89 <= data["timeLeft"] <= 90
    assert (data["timerStatus"], data["payload"], data["attempts"]) == ("Scheduled", {"order": 42, "tags": ["a"]}, 0)
    assert (data["firedAt"], data["lastError"]) == (None, None)


def test_create_payload_from_file(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text('{\n  "x": [1, 2],\n  "note": "caf\u00e9"\n}\n', encoding="utf-8")
    data = cli.ok_json("create", "--url", URL, "--in", "1m", "--payload", "@body.json")
    assert data["payload"] == {"x": [1, 2], "note": "caf\u00e9"}
    [stored] = cli.stored()
    assert stored.payload == data["payload"]


@pytest.mark.parametrize(
    ("at", "expiry"),
    [
        pytest.param("2030-06-01T12:00:00.123456Z", "2030-06-01T12:00:00.123Z", id="zulu-ms-truncated"),
        pytest.param("2030-06-01T12:00:00+01:00", "2030-06-01T11:00:00.000Z", id="offset"),
        pytest.param("2030-06-01T12:00:00", "2030-06-01T10:00:00.000Z", id="naive-is-local-paris-summer"),
        pytest.param("2030-01-15T12:00:00.5", "2030-01-15T11:00:00.500Z", id="naive-is-local-paris-winter"),
    ],
)
def test_create_at(cli: Cli, monkeypatch: pytest.MonkeyPatch, at: str, expiry: str) -> None:
    monkeypatch.setenv("TIMERCTL_MAX_HORIZON", "36500d")
    monkeypatch.setattr(timers_cli, "_local_zone", lambda: ZoneInfo("Europe/Paris"))
    data = cli.ok_json("create", "--url", URL, "--at", at)
    assert data["expiryTime"] == expiry
    [stored] = cli.stored()
    assert stored.to_json(T0)["expiryTime"] == expiry


def test_create_for_people_prints_a_table(cli: Cli) -> None:
    result = cli("create", "--url", URL, "--in", "2m", "--id", "people-1", "--payload", '{"k": 1}')
    assert (result.code, result.err) == (0, "")
    for text in ("people-1", "Scheduled", URL, '{"k": 1}', "timeLeft"):
        assert text in result.out
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.out)


# --- idempotent --id ------------------------------------------------------------------------------------

AT = future(timedelta(days=1))


@pytest.mark.parametrize(
    "when",
    [
        pytest.param(["--in", "90s"], id="in"),
        pytest.param(["--at", AT], id="at"),
        pytest.param(["--minutes", "5", "--seconds", "3"], id="hms"),
    ],
)
def test_same_id_same_spec_returns_the_existing_timer(cli: Cli, when: list[str]) -> None:
    args = ["create", "--url", URL, *when, "--id", "job-7", "--payload", '{"a": 1, "b": 2}']
    first = cli.ok_json(*args)
    second = cli.ok_json(*args)
    third = cli.ok_json(*args[:-1], '{"b": 2, "a": 1}')  # the same JSON object, keys in another order
    keys = ("timerId", "expiryTime", "createdAt", "payload")
    assert [first[k] for k in keys] == [second[k] for k in keys] == [third[k] for k in keys]
    assert first["timerId"] == "job-7"
    assert [t.timer_id for t in cli.stored()] == ["job-7"]


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(["--url", URL + "/other", "--in", "90s", "--payload", '{"a": 1}'], id="other-url"),
        pytest.param(["--url", URL, "--in", "90s", "--payload", '{"a": 2}'], id="other-payload"),
        pytest.param(["--url", URL, "--in", "90s"], id="payload-dropped"),
        pytest.param(["--url", URL, "--in", "91s", "--payload", '{"a": 1}'], id="other-delay"),
        pytest.param(["--url", URL, "--at", AT, "--payload", '{"a": 1}'], id="instant-instead-of-delay"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_same_id_different_spec_conflicts(cli: Cli, changed: list[str], as_json: bool) -> None:
    original = cli.ok_json("create", "--url", URL, "--in", "90s", "--payload", '{"a": 1}', "--id", "job-8")
    result = cli("create", *changed, "--id", "job-8", *(["--json"] if as_json else []))
    assert_rejected(result, 4, "timer job-8 already exists with a different spec")
    [stored] = cli.stored()
    assert stored.to_json(T0)["expiryTime"] == original["expiryTime"]
    assert (stored.webhook_url, stored.payload) == (URL, {"a": 1})


# --- get ------------------------------------------------------------------------------------------------


def test_get_json_matches_create(cli: Cli) -> None:
    created = cli.ok_json("create", "--url", URL, "--in", "10m", "--payload", "[1]")
    got = cli.ok_json("get", created["timerId"])
    assert set(got) == DETAIL_KEYS and (got["deliveries"], got["deliveriesOmitted"]) == ([], 0)
    assert {k: v for k, v in got.items() if k in TIMER_KEYS - {"timeLeft"}} == {
        k: v for k, v in created.items() if k != "timeLeft"
    }
    assert 0 <= created["timeLeft"] - got["timeLeft"] <= 1


def test_get_for_people(cli: Cli) -> None:
    cli.ok_json("create", "--url", URL, "--in", "10m", "--id", "g-1")
    result = cli("get", "g-1")
    assert (result.code, result.err) == (0, "")
    assert "g-1" in result.out and URL in result.out and "Scheduled" in result.out


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_get_missing(cli: Cli, as_json: bool) -> None:
    result = cli("get", "nope", *(["--json"] if as_json else []))
    assert (result.code, result.out, result.err) == (1, "", "error: timer nope not found\n")


@pytest.mark.parametrize("status", [pytest.param(s, id=s.value) for s in Status])
def test_get_shows_every_status(cli: Cli, status: Status) -> None:
    seed(cli.db, "seeded", status)
    data = cli.ok_json("get", "seeded")
    assert data["timerStatus"] == status.value
    # T0 is in 2030: a pending timer has years left; any other has nothing left to wait for.
    assert (data["timeLeft"] > 0) is status.is_pending
    assert (data["nextAttemptAt"] is not None) is status.is_pending
    assert (data["endedAt"] is not None) is status.is_final
    if status in (Status.FINISHED, Status.FAILED, Status.RETRYING):
        assert (data["attempts"], data["deliveryCount"], len(data["deliveries"])) == (1, 1, 1)
    assert data["firedAt"] == ("2030-01-01T00:00:00.000Z" if status is Status.FINISHED else None)
    assert data["lastError"] == {Status.FAILED: "HTTP 500", Status.RETRYING: "HTTP 503"}.get(status)
    people = cli("get", "seeded")
    assert people.code == 0 and status.value in people.out


# --- list -----------------------------------------------------------------------------------------------


@pytest.fixture
def three(cli: Cli) -> Cli:
    """Three Scheduled timers (late, soon, middle) and one of them cancelled: ``soon`` expires first."""
    cli.ok_json("create", "--url", URL, "--in", "3h", "--id", "late")
    cli.ok_json("create", "--url", URL, "--in", "1m", "--id", "soon")
    cli.ok_json("create", "--url", URL, "--in", "2h", "--id", "middle")
    cli.ok_json("cancel", "middle")
    return cli


@pytest.mark.parametrize(
    ("args", "ids"),
    [
        pytest.param([], ["soon", "middle", "late"], id="all-soonest-first"),
        pytest.param(["--status", "Scheduled"], ["soon", "late"], id="scheduled"),
        pytest.param(["--status", "cancelled"], ["middle"], id="cancelled-case-insensitive"),
        pytest.param(["--status", "Finished"], [], id="none-finished"),
        pytest.param(["--limit", "1"], ["soon"], id="limit-1"),
        pytest.param(["--limit", "2"], ["soon", "middle"], id="limit-2"),
        pytest.param(["--status", "Scheduled", "--limit", "1"], ["soon"], id="status-and-limit"),
        pytest.param(["--due-within", "10m"], ["soon"], id="due-within"),
    ],
)
def test_list_json(three: Cli, args: list[str], ids: list[str]) -> None:
    data = three.ok_json("list", *args)
    assert isinstance(data, list)
    assert [d["timerId"] for d in data] == ids
    assert all(set(d) == TIMER_KEYS for d in data)


def test_list_json_empty_is_an_empty_array(cli: Cli) -> None:
    assert cli.ok_json("list") == []


def test_list_for_people(three: Cli) -> None:
    result = three("list")
    assert (result.code, result.err) == (0, "")
    assert "3 timer(s)" in result.out
    assert result.out.index("soon") < result.out.index("middle") < result.out.index("late")
    filtered = three("list", "--status", "Cancelled")
    assert "1 timer(s)" in filtered.out and "middle" in filtered.out and "soon" not in filtered.out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["--status", "done"], "unknown status 'done'; expected one of Scheduled", id="bad-status"),
        pytest.param(["--status", ""], "unknown status", id="empty-status"),
        pytest.param(["--limit", "0"], "Invalid value for '--limit'", id="limit-0"),
        pytest.param(["--limit", "-1"], "Invalid value for '--limit'", id="limit-negative"),
        pytest.param(["--limit", "many"], "Invalid value for '--limit'", id="limit-not-a-number"),
        pytest.param(["--due-within", "soon"], "invalid duration", id="bad-due-within"),
        pytest.param(["--due-within", ""], "invalid duration", id="empty-due-within"),
        pytest.param(["--due-within", "900000000d"], "past the year 9999", id="due-within-overflow"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_list_rejects(cli: Cli, args: list[str], fragment: str, as_json: bool) -> None:
    assert_rejected(cli("list", *args, *(["--json"] if as_json else [])), 2, fragment)


# --- cancel ---------------------------------------------------------------------------------------------


def test_cancel_json(cli: Cli) -> None:
    cli.ok_json("create", "--url", URL, "--in", "1h", "--id", "c-1")
    data = cli.ok_json("cancel", "c-1")
    assert (data["timerId"], data["timerStatus"]) == ("c-1", "Cancelled")
    assert set(data) == TIMER_KEYS and data["endedAt"] is not None
    assert cli.ok_json("get", "c-1")["timerStatus"] == "Cancelled"
    [stored] = cli.stored()
    assert stored.status is Status.CANCELLED


def test_cancel_for_people(cli: Cli) -> None:
    cli.ok_json("create", "--url", URL, "--in", "1h", "--id", "c-2")
    result = cli("cancel", "c-2")
    assert (result.code, result.err) == (0, "")
    assert "c-2" in result.out and "Cancelled" in result.out


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_cancel_missing(cli: Cli, as_json: bool) -> None:
    result = cli("cancel", "nope", *(["--json"] if as_json else []))
    assert (result.code, result.out, result.err) == (1, "", "error: timer nope not found\n")


@pytest.mark.parametrize(
    "status", [pytest.param(s, id=s.value) for s in (Status.RUNNING, Status.FINISHED, Status.FAILED, Status.CANCELLED)]
)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_cancel_conflicts_name_the_status(cli: Cli, status: Status, as_json: bool) -> None:
    seed(cli.db, "done-1", status)
    result = cli("cancel", "done-1", *(["--json"] if as_json else []))
    why = "its POST has already started" if status is Status.RUNNING else f"it is {status.value}"
    assert_rejected(result, 4, f"timer done-1 cannot be cancelled: {why}; only a Scheduled or Retrying timer can")
    [stored] = cli.stored()
    assert stored.status is status


# --- payload text limits (the payload rule on every path: test_spec.py) ----------------------------------


@pytest.fixture
def endless(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """A FIFO a thread keeps writing to (8 MiB at most) until its reader goes; ``written`` says how much went in."""
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)
    written = [0]

    def feed() -> None:
        chunk = b" " * 65536
        with open(fifo, "wb") as out:  # blocks until a reader opens it
            try:
                while written[0] < 8 * MAX_PAYLOAD_TEXT_BYTES:
                    out.write(chunk)
                    out.flush()
                    written[0] += len(chunk)
            except BrokenPipeError:
                pass

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    yield fifo, written
    if thread.is_alive():  # the reader never came or stopped early: let the writer finish
        with open(fifo, "rb") as drain:
            while drain.read(1 << 20):
                pass
    thread.join(timeout=10)


def test_payload_file_is_read_only_up_to_the_text_limit(cli: Cli, endless: tuple[Path, list[int]]) -> None:
    """``--payload @/dev/zero`` read everything before the fix; an endless FIFO stands in for it here."""
    fifo, written = endless
    result = cli("create", "--url", PAYLOAD_URL, "--in", "1h", "--payload", f"@{fifo}", "--json")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"error: payload file '{fifo}' is over {MAX_PAYLOAD_TEXT_BYTES} bytes (1 MiB); not read further\n"
    )
    # What the writer got in before the reader closed: the limit plus what a pipe buffers, never all of it.
    assert written[0] < 2 * MAX_PAYLOAD_TEXT_BYTES


def test_a_from_file_line_over_the_limit_is_one_invalid_line(cli: Cli, tmp_path: Path) -> None:
    good = json.dumps({"url": PAYLOAD_URL, "in": "1h", "id": "after"})
    huge = json.dumps({"url": PAYLOAD_URL, "in": "1h", "payload": " " * (MAX_PAYLOAD_TEXT_BYTES + 20_000)})
    (tmp_path / "specs.jsonl").write_text(f"{huge}\n{good}\n", encoding="utf-8")
    result = cli("create", "--from-file", str(tmp_path / "specs.jsonl"))
    first, second = (json.loads(line) for line in result.out.splitlines())
    assert first["line"] == 1 and first["error"].startswith("line is over ") and "not parsed" in first["error"]
    assert second["timerId"] == "after"
    assert result.code == 2 and "1 line(s) were invalid" in result.err


# --- a corrupt row ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("payload", "{nope", "payload is not valid JSON"),
        (
            "status",
            "Exploded",
            "status 'Exploded' is not one of Scheduled, Running, Retrying, Finished, Failed, Cancelled",
        ),
        ("created_ms", "yesterday", "createdAt 'yesterday' is not an instant"),
    ],
)
def test_get_list_and_stats_show_a_corrupt_timer_as_failed(
    cli: Cli, store: SqliteStore, column: str, value: str, why: str
) -> None:
    """A row edited by hand or written by another tool (the store's own tests: ``test_store_rows.py``)."""
    good, bad = ("https://hooks.example.com/g", "https://hooks.example.com/b")
    ago = T0 - timedelta(minutes=1)
    store.insert_many(
        [
            make_timer("good", T0, url=good, created_at=ago, payload={"n": "good"}),
            make_timer("bad", T0, url=bad, created_at=ago, payload={"n": "bad"}),
        ]
    )
    corrupt(cli.db, "bad", column, value)

    got = cli("get", "bad", "--json")
    assert got.code == 0, got
    shown = got.json
    assert shown["timerStatus"] == "Failed"
    assert shown["lastError"].startswith("stored timer is corrupt: ") and why in shown["lastError"]

    listed = cli("list", "--json")
    assert listed.code == 0, listed
    assert {t["timerId"]: t["timerStatus"] for t in listed.json} == {"good": "Scheduled", "bad": "Failed"}
    assert cli("list").code == 0  # the people's table too

    stats = cli("stats", "--json")
    assert stats.code == 0, stats
    counts = stats.json["counts"]
    assert sum(counts.values()) == 2
    if column == "status":
        assert counts["Failed"] == 1  # a status no timer has counts as Failed, as it reads
    assert cli("get", "bad").code == 0

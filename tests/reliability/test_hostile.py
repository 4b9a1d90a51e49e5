"""Hostile input: generated garbage for every parser, malformed Kafka records, and a hostile command line.

The rule under test is the same everywhere: bad input is refused with ``InvalidInput`` (a dead letter
on Kafka, exit 2 and one ``error:`` line on the command line), never a crash or a traceback, and
nothing bad is stored. Whatever is accepted must be well formed and storable.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from tests.factories import TIMERCTL, make_timer, process_env, stored_timers
from tests.fixtures_kafka import consumer_thread, read_topic
from tests.polling import wait_for
from timerctl.changes import cancel
from timerctl.config import Settings
from timerctl.delivery import build_body
from timerctl.model import (
    FINAL_STATUSES,
    MAX_PAYLOAD_BYTES,
    MAX_URL_LENGTH,
    TRANSITIONS,
    Conflict,
    InvalidInput,
    Status,
    Timer,
    format_instant,
    utc,
    validate_url,
)
from timerctl.queue.kafka import DLQ_REASON_HEADER, decode, dlq_topic, encode_create
from timerctl.stores.sqlite import SqliteStore
from timerctl.timeparse import parse_duration, parse_time

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = datetime(2030, 1, 1, tzinfo=UTC)

#: Characters that break parsers and headers, mixed into generated text.
NASTY = ["\r", "\n", "\x00", "\t", " ", "\x7f", "\x85", "\xa0", "\u2028", "\u3000", "\ud800", "\udcff",
         "\ufeff", "@", ":", "[", "]", "/", "?", "#", "%", "\\", "Z", "T", "+", "-", "."]  # fmt: skip
nasty_text = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(NASTY)), max_size=60)


def no_crash(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or None when it refused with InvalidInput; any other exception fails the test."""
    try:
        return fn(*args)
    except InvalidInput:
        return None


# --- durations ------------------------------------------------------------------------------------------

UNITS: list[tuple[str, Fraction]] = [
    ("w", Fraction(604800)),
    ("d", Fraction(86400)),
    ("h", Fraction(3600)),
    ("m", Fraction(60)),
    ("s", Fraction(1)),
    ("ms", Fraction(1, 1000)),
]


@st.composite
def durations(draw: st.DrawFn) -> tuple[str, timedelta]:
    """A well-formed duration (units largest first, each once) and the exact timedelta it means."""
    chosen = sorted(draw(st.sets(st.integers(0, len(UNITS) - 1), min_size=1)))
    text, total = "", Fraction(0)
    for index in chosen:
        unit, scale = UNITS[index]
        number = str(draw(st.integers(0, 1000)))
        if draw(st.booleans()):
            number += "." + draw(st.text(alphabet="0123456789", min_size=1, max_size=3))
        text += number + unit
        total += Fraction(number) * scale
    if draw(st.booleans()):
        text = draw(st.sampled_from([text.upper(), f"  {text}\t"]))
    return text, timedelta(microseconds=round(total * 1_000_000))


@FUZZ
@given(durations())
@example(("0s", timedelta(0)))
@example(("1h2m3.5s", timedelta(hours=1, minutes=2, seconds=3.5)))
@example(("1m5ms", timedelta(minutes=1, milliseconds=5)))
def test_parse_duration_reads_every_well_formed_duration_exactly(case: tuple[str, timedelta]) -> None:
    text, expected = case
    assert abs(parse_duration(text) - expected) <= timedelta(microseconds=1), text


@FUZZ
@given(st.integers(0, 10**9))
def test_parse_duration_reads_bare_seconds(seconds: int) -> None:
    assert parse_duration(str(seconds)) == timedelta(seconds=seconds)


@FUZZ
@given(st.one_of(nasty_text, st.text(alphabet="0123456789.wdhms -eE", max_size=40)))
@example("9" * 400 + "w")
@example("1" * 400)
@example("5m1h")
@example("1h1h")
@example("-1s")
@example("")
def test_parse_duration_refuses_garbage_only_with_invalid_input(text: str) -> None:
    result = no_crash(parse_duration, text)
    assert result is None or result >= timedelta(0)


# --- instants -------------------------------------------------------------------------------------------

aware_datetimes = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.timezones())


@FUZZ
@given(aware_datetimes, st.sampled_from(["auto", "minutes", "seconds", "milliseconds", "microseconds"]))
def test_parse_time_round_trips_aware_iso_datetimes(dt: datetime, timespec: str) -> None:
    text = dt.isoformat(timespec=timespec)
    if dt.utcoffset() == timedelta(0) and text.endswith("+00:00"):
        text = text[: -len("+00:00")] + "Z"
    offset = dt.utcoffset()
    assert offset is not None
    # The text carries the offset in force at ``dt``: truncating in a zone could move across a transition.
    shown = dt.replace(tzinfo=timezone(offset))
    if timespec == "minutes":
        shown = shown.replace(second=0, microsecond=0)
    elif timespec == "seconds":
        shown = shown.replace(microsecond=0)
    # The zone passed for naive times must not matter for a time with an offset.
    assert parse_time(text, UTC) == utc(shown), text


@FUZZ
@given(nasty_text)
@example("2026-03-29T02:30Z+01:00")
@example("9999-12-31T23:59:59-01:00")
@example("0001-01-01T00:00:00+01:00")
@example("Z")
def test_parse_time_refuses_garbage_only_with_invalid_input(text: str) -> None:
    result = no_crash(parse_time, text, UTC)
    assert result is None or result.tzinfo is UTC


# --- URLs -----------------------------------------------------------------------------------------------

url_like = st.one_of(
    nasty_text,
    st.builds(
        str.__add__,
        st.sampled_from(["http://", "https://", "HTTP://", "http:", "http:///", "ftp://", "//", "http://user:pw@"]),
        nasty_text,
    ),
)


def has_space_or_control(text: str) -> bool:
    return any(c.isspace() or unicodedata.category(c) in ("Cc", "Cs") for c in text)


@FUZZ
@given(url_like)
@example("http://x/\r\nX-Evil: 1")
@example("http://x/\u2028X-Evil: 1")
@example("http://x/\x85X-Evil: 1")
@example("http://a\xa0b/")
@example("http://[::1/")
@example("http://x:99999/")
@example("http://x/\ud800")
def test_validate_url_accepts_only_clean_absolute_http_urls(url: str) -> None:
    accepted = no_crash(validate_url, url)
    if accepted is None:
        return
    assert accepted == url
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.hostname, url
    assert parts.username is None and parts.password is None, url
    assert not has_space_or_control(url), f"accepted {url!r}, which has whitespace or a control character"
    assert len(url) <= MAX_URL_LENGTH


@FUZZ
@given(st.integers(0, 2 * MAX_URL_LENGTH), st.sampled_from(["a", "é", "\r", "\x00"]))
def test_validate_url_length_limit_and_long_hostile_urls(length: int, filler: str) -> None:
    url = "https://h.example/" + filler * length
    accepted = no_crash(validate_url, url) is not None
    assert accepted == ((length == 0 or filler in ("a", "é")) and len(url) <= MAX_URL_LENGTH)


# --- the status state machine ---------------------------------------------------------------------------

#: README ("States and the cancel window"): Scheduled/Retrying → Running (the POST starts) → Finished |
#: Retrying | Failed; Cancelled from Scheduled or Retrying; Scheduled/Retrying → themselves (update, fire
#: now); Running → Scheduled/Retrying a start handed back; Running → Running a lease taken over; Failed →
#: Scheduled a retry by hand. Written out to catch a changed table.
README_MOVES = {
    Status.SCHEDULED: {Status.SCHEDULED, Status.RUNNING, Status.CANCELLED},
    Status.RETRYING: {Status.RETRYING, Status.RUNNING, Status.CANCELLED},
    Status.RUNNING: {Status.RUNNING, Status.SCHEDULED, Status.RETRYING, Status.FINISHED, Status.FAILED},
    Status.FINISHED: set(),
    Status.FAILED: {Status.SCHEDULED},
    Status.CANCELLED: set(),
}


def test_the_transition_table_is_the_documented_one() -> None:
    assert {src: set(dst) for src, dst in TRANSITIONS.items()} == README_MOVES
    ended = {Status.FINISHED, Status.FAILED, Status.CANCELLED}
    assert {s for s in Status if s.is_final} == set(FINAL_STATUSES) == ended


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(list(Status)), st.just("cancel")), max_size=40))
def test_random_moves_follow_the_state_machine(moves: list[Status | str]) -> None:
    timer = make_timer("fsm", T0, url="https://h.example/", created_at=T0)
    for move in moves:
        before = timer
        if move == "cancel":
            if before.status.is_pending:
                timer = cancel(before, T0)
                assert timer.status is Status.CANCELLED and timer.revision == before.revision + 1
            else:
                with pytest.raises(Conflict):
                    cancel(before, T0)
            continue
        elif isinstance(move, Status) and move in README_MOVES[before.status]:
            timer = before.move(move)
            assert timer.status is move
        else:
            assert isinstance(move, Status)
            with pytest.raises(ValueError):
                before.move(move)
        if before.status.is_final and before.status is not Status.FAILED:
            assert timer is before, f"{before.status} changed to {timer.status}"
        assert dataclasses.replace(timer, status=before.status) == dataclasses.replace(before, status=before.status)


# --- records from the queue and the cache ---------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    nasty_text,
)
json_like = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)).map(
    lambda d: d.isoformat().replace("+00:00", "Z")
)
#: Each field either plausible (to get past the first check) or anything at all.
PLAUSIBLE = {
    "timerId": st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
    "webhookUrl": st.sampled_from(["https://h.example/hook", "http://127.0.0.1:9/x"]),
    "expiryTime": instants,
    "createdAt": instants,
    "timerStatus": st.sampled_from([s.value for s in Status]),
    "payload": json_like,
    "attempts": st.one_of(st.integers(0, 10), st.integers(2**62, 2**80)),
    "firedAt": st.one_of(st.none(), instants),
    "lastError": st.one_of(st.none(), nasty_text),
    "dueAt": instants,
}
records = st.one_of(
    json_like,
    st.fixed_dictionaries({}, optional={k: st.one_of(v, json_like) for k, v in PLAUSIBLE.items()}),
    st.fixed_dictionaries({k: v for k, v in PLAUSIBLE.items() if k not in ("firedAt", "dueAt", "lastError")}),
)


MINIMAL_RECORD = {
    "timerId": "a",
    "webhookUrl": "http://x/",
    "expiryTime": "2030-01-01T00:00Z",
    "createdAt": "2030-01-01T00:00Z",
}


@pytest.fixture(scope="module")
def memory_store() -> Iterator[SqliteStore]:
    store = SqliteStore(":memory:")
    yield store
    store.close()


def assert_storable(store: SqliteStore, timer: Timer) -> None:
    """An accepted timer must be writable by every consumer and read back unchanged (no poison pill)."""
    timer = dataclasses.replace(timer, timer_id=uuid.uuid4().hex)
    store.insert_many([timer])
    assert store.get(timer.timer_id) == timer


@FUZZ
@given(records)
@example({**MINIMAL_RECORD, "attempts": 2**64})
@example({**MINIMAL_RECORD, "lastError": "\ud800"})
def test_from_record_refuses_anything_malformed_and_accepts_only_storable_timers(
    memory_store: SqliteStore, data: Any
) -> None:
    timer = no_crash(Timer.from_record, data)
    if timer is not None:
        assert_storable(memory_store, timer)


@FUZZ
@given(
    st.fixed_dictionaries({k: v for k, v in PLAUSIBLE.items() if k not in ("firedAt", "dueAt", "lastError")}),
    st.integers(1, 10**6),
)
def test_the_webhook_body_is_exactly_the_compact_json_of_its_fields(data: Any, attempt: int) -> None:
    """``build_body`` assembles the JSON from parts for speed; it must equal encoding the whole dict."""
    timer = no_crash(Timer.from_record, data)
    assume(timer is not None)
    assert timer is not None
    fired = datetime.now(UTC)
    fields = {
        "timerId": timer.timer_id,
        "expiryTime": format_instant(timer.expiry_time),
        "firedAt": format_instant(fired),
        "attempt": attempt,
        "payload": timer.payload,
    }
    assert build_body(timer, attempt, fired) == json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda r: json.dumps({"v": 1, "op": "create", "timer": r}).encode(), records),
        st.builds(
            lambda r: json.dumps({"v": 1, "op": "create", "timer": r}, ensure_ascii=False).encode(
                "utf-8", "surrogatepass"
            ),
            records,
        ),
        st.builds(lambda r: json.dumps(r).encode("utf-8", "surrogatepass"), json_like),
    )
)
@example(b"[" * 100_000)
@example(b'{"v": 1, "op": "cancel", "timerId": "a\\u0000"}')
@example(b'{"v": true, "op": "cancel", "timerId": "a"}')
@example(b"\xed\xa0\x80")
def test_decode_refuses_any_bytes_but_a_valid_record(memory_store: SqliteStore, value: bytes) -> None:
    message = no_crash(decode, value)
    if message is not None and message.timer is not None:
        assert_storable(memory_store, message.timer)


# --- a corpus of malformed records on a real topic ------------------------------------------------------


#: ``good_timer(timer_id)``: a valid timer, made now and due an hour later.
good_timer = partial(make_timer, url="http://127.0.0.1:9/hook", payload={"ok": True})


def create_value(**timer_changes: Any) -> bytes:
    """A create record whose timer has ``timer_changes`` applied to a valid timer's record."""
    record = {**good_timer("x").to_record(), **timer_changes}
    return json.dumps({"v": 1, "op": "create", "timer": record}).encode()


def malformed_corpus() -> list[tuple[bytes, bytes | None, str]]:
    """(key, value, a word the dead letter's reason must contain) for each kind of bad record."""
    valid = encode_create(good_timer("x"))
    return [
        (b"truncated", valid[: len(valid) // 2], "not JSON"),
        (b"timer-list", json.dumps({"v": 1, "op": "create", "timer": [1, 2]}).encode(), "JSON object"),
        (b"attempts-str", create_value(attempts="3"), "attempts"),
        (b"attempts-huge", create_value(attempts=2**64), "attempts"),
        (b"expiry-number", create_value(expiryTime=1893456000000), "invalid timer"),
        (b"url-2mb", create_value(webhookUrl="http://x/" + "a" * (2 * 1024 * 1024)), "characters"),
        (b"payload-65k", create_value(payload={"blob": "p" * (MAX_PAYLOAD_BYTES + 1)}), "64 KiB"),
        (b"op-unknown", b'{"v": 1, "op": "delete", "timerId": "x"}', "unknown op"),
        (b"op-missing", b'{"v": 1, "timerId": "x"}', "unknown op"),
        (b"version-2", valid.replace(b'"v":1', b'"v":2'), "version"),
        (b"version-str", valid.replace(b'"v":1', b'"v":"1"'), "version"),
        (b"version-missing", valid.replace(b'"v":1,', b""), "version"),
        (b"not-utf8", b'{"v": 1, "op": "cancel", "timerId": "\xff\xfe"}', "UTF-8"),
        (b"null", None, "null"),
        (b"empty", b"", "not JSON"),
        (b"surrogate", create_value(payload="\ud800"), "surrogate"),
        (b"surrogate-error", create_value(lastError="x\udc00"), "surrogate"),
        (b"cancel-crlf", b'{"v": 1, "op": "cancel", "timerId": "a\\r\\nX-Evil: 1"}', "timerId"),
        (b"json-array", b"[1, 2, 3]", "JSON object"),
    ]


def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes | None]]) -> None:
    """Publish in order to partition 0, acknowledged; large requests allowed, gzip so a broker takes 2 MB."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024, compression_type="gzip"
    )
    try:
        futures = [producer.send(topic, key=key, value=value, partition=0) for key, value in records]
        producer.flush(timeout=20)
        for future in futures:
            future.get(timeout=1)  # raises when the broker refused the record
    finally:
        producer.close(timeout=5)


def test_every_malformed_record_is_dead_lettered_and_the_consumer_keeps_going(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    corpus = malformed_corpus()
    after = good_timer("after-the-bad-ones")
    produce(kafka_bootstrap, kafka_topic, [(k, v) for k, v, _ in corpus] + [(b"after", encode_create(after))])
    settings = Settings(db=str(tmp_path / "timers.db"), kafka_bootstrap=kafka_bootstrap, topic=kafka_topic)
    store = SqliteStore(settings.db_path)
    try:
        with consumer_thread(settings, store) as errors:
            wait_for(lambda: errors or store.get(after.timer_id), 30, "the valid record after the corpus")
        assert store.get(after.timer_id) == after
        assert sum(store.counts().values()) == 1, [t.timer_id for t in store.find()]
    finally:
        store.close()

    letters = {r.key: r for r in read_topic(kafka_bootstrap, dlq_topic(kafka_topic), len(corpus), partitions=1)}
    assert sorted(letters) == sorted(key for key, _, _ in corpus)
    for key, value, word in corpus:
        letter = json.loads(letters[key].value)
        assert word in letter["reason"], (key, letter["reason"])
        assert dict(letters[key].headers)[DLQ_REASON_HEADER].decode() == letter["reason"]
        assert letter["topic"] == kafka_topic and letter["partition"] == 0
        if value is not None and len(value) > 256 * 1024:
            assert letter["truncated"] is True and letter["size"] == len(value)


# --- the command line -----------------------------------------------------------------------------------

Arg = str | bytes


@dataclasses.dataclass
class Cli:
    """``timerctl`` as a subprocess on the test's own store file; arguments may be bytes (not UTF-8)."""

    tmp: Path

    @property
    def db(self) -> Path:
        return self.tmp / "timers.db"

    def env(self) -> dict[str, str]:
        return process_env(self.tmp)

    def __call__(self, *args: Arg, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        argv: list[Arg] = [TIMERCTL.encode() if any(isinstance(a, bytes) for a in args) else TIMERCTL, *args]
        return subprocess.run(argv, env=self.env(), input=stdin, capture_output=True, timeout=30, check=False)

    def stored(self) -> list[Timer]:
        return stored_timers(self.db)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def assert_refused(done: subprocess.CompletedProcess[bytes], *, stdout_empty: bool = True) -> str:
    """Exit 2, exactly one ``error:`` line on stderr and no traceback; the line's text."""
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if stdout_empty:
        assert done.stdout == b"", done.stdout
    return lines[0]


URL = "http://127.0.0.1:9/hook"
HOSTILE_CREATES: dict[str, list[Arg]] = {
    "payload-over-64k": ["--url", URL, "--in", "1m", "--payload", json.dumps("x" * MAX_PAYLOAD_BYTES)],
    "url-over-2048": ["--url", URL + "?" + "q" * MAX_URL_LENGTH, "--in", "1m"],
    "url-crlf-header": ["--url", "http://x/\r\nX-Evil: 1", "--in", "1m"],
    "url-lf-header": ["--url", "http://x/\nX-Evil: 1", "--in", "1m"],
    "url-crlf-in-host": ["--url", "http://x\r\nX-Evil: 1/", "--in", "1m"],
    "url-unicode-line-separator": ["--url", "http://x/\u2028X-Evil: 1", "--in", "1m"],
    "url-next-line": ["--url", "http://x/\x85X-Evil: 1", "--in", "1m"],
    "id-crlf-header": ["--url", URL, "--in", "1m", "--id", "order-1\r\nX-Evil: 1"],
    "id-lf": ["--url", URL, "--in", "1m", "--id", "a\nb"],
    "in-crlf": ["--url", URL, "--in", "1m\r\nX-Evil: 1"],
    "url-non-utf8": [b"--url", b"http://x/\xff", b"--in", b"1m"],
    "host-non-utf8": [b"--url", b"http://\xc3\x28/", b"--in", b"1m"],
    "id-non-utf8": [b"--url", URL.encode(), b"--in", b"1m", b"--id", b"order-\xff"],
    "payload-non-utf8": [b"--url", URL.encode(), b"--in", b"1m", b"--payload", b'"\xff\xfe"'],
    "in-non-utf8": [b"--url", URL.encode(), b"--in", b"1m\xff"],
    "at-non-utf8": [b"--url", URL.encode(), b"--at", b"2030-01-01T00:00\xffZ"],
    "hours-non-utf8": [b"--url", URL.encode(), b"--hours", b"1\xff"],
}


@pytest.mark.parametrize("args", list(HOSTILE_CREATES.values()), ids=list(HOSTILE_CREATES))
def test_hostile_create_options_are_refused_with_one_error_line(cli: Cli, args: list[Arg]) -> None:
    assert_refused(cli("create", *args))
    assert cli.stored() == []


HOSTILE_PAYLOAD_FILES = {
    "nul-byte": b'{"a": "x\x00y"}',
    "non-utf8": b'{"a": "\xff\xfe"}',
    "over-64k": json.dumps({"a": "x" * MAX_PAYLOAD_BYTES}).encode(),
    "2mb": b'"' + b"x" * (2 * 1024 * 1024) + b'"',
    "surrogate-escape": b'{"a": "\\ud800"}',
    "truncated": b'{"a": ',
    "nested-too-deep": b"[" * 100_000 + b"]" * 100_000,
    "nan": b'{"a": NaN}',
}


@pytest.mark.parametrize("content", list(HOSTILE_PAYLOAD_FILES.values()), ids=list(HOSTILE_PAYLOAD_FILES))
def test_hostile_payload_files_are_refused_with_one_error_line(cli: Cli, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "payload.json"
    path.write_bytes(content)
    assert_refused(cli("create", "--url", URL, "--in", "1m", "--payload", f"@{path}"))
    assert cli.stored() == []


def spec_line(**fields: Any) -> bytes:
    return json.dumps({"url": URL, "in": "1h", **fields}).encode()


#: Lines of a --from-file import that must each be refused on their own, by line number.
HOSTILE_LINES: list[bytes] = [
    b'{"url": "http://127.0.0.1:9/\x00", "in": "1h"}',  # a raw NUL byte
    b'{"url": "http://127.0.0.1:9/hook", "in": "1h", "id": "a\x00b"}',
    spec_line(url="http://127.0.0.1:9/\u0000"),
    spec_line(id="a\u0000b"),
    spec_line(url="http://x/\r\nX-Evil: 1"),
    spec_line(id="order-1\r\nX-Evil: 1"),
    b'{"url": "http://127.0.0.1:9/\xff", "in": "1h"}',  # not UTF-8
    b'{"url": "http://127.0.0.1:9/hook", "in": "1h", "payload": "\xc3\x28"}',
    b"\xff\xfe\x00\x00",
    spec_line(payload="\ud800"),
    spec_line(payload="x" * MAX_PAYLOAD_BYTES),
    spec_line(url="http://x/" + "a" * (2 * 1024 * 1024)),
    b'{"url": "http://127.0.0.1:9/hook", "in": ',
    spec_line(**{"in": 5}),
    b"[1, 2]",
    b"[" * 100_000,
    spec_line(**{"in": "bogus"}),
    spec_line(at="2030-01-01T00:00\r\nX-Evil: 1"),
]


def from_file_lines(valid: int) -> tuple[bytes, list[int]]:
    """The hostile lines with a valid one before each and ``valid`` in all; the hostile line numbers."""
    lines: list[bytes] = []
    bad: list[int] = []
    for n, line in enumerate(HOSTILE_LINES):
        lines.append(spec_line(id=f"ok-{n}"))
        lines.append(line)
        bad.append(len(lines))
    lines += [spec_line(id=f"ok-{n}") for n in range(len(HOSTILE_LINES), valid)]
    return b"\n".join(lines) + b"\n", bad


def assert_import_refused_bad_lines(
    cli: Cli, done: subprocess.CompletedProcess[bytes], bad: list[int], valid: int
) -> None:
    assert_refused(done, stdout_empty=False)
    results = [json.loads(line) for line in done.stdout.decode().splitlines()]
    errors = {r["line"]: r["error"] for r in results if "error" in r}
    assert sorted(errors) == bad, errors
    # One output line per input line, in input order, so a script can pair them by position.
    assert [r.get("line", n) for n, r in enumerate(results, start=1)] == list(range(1, len(results) + 1))
    created = {r["timerId"] for r in results if "timerId" in r}
    assert created == {f"ok-{n}" for n in range(valid)}
    assert {t.timer_id for t in cli.stored()} == created


def test_from_file_refuses_each_hostile_line_and_creates_the_valid_ones(cli: Cli, tmp_path: Path) -> None:
    content, bad = from_file_lines(valid=len(HOSTILE_LINES))
    path = tmp_path / "timers.jsonl"
    path.write_bytes(content)
    assert_import_refused_bad_lines(cli, cli("create", "--from-file", str(path)), bad, len(HOSTILE_LINES))


def test_from_file_on_stdin_refuses_each_hostile_line_and_creates_the_valid_ones(cli: Cli) -> None:
    content, bad = from_file_lines(valid=len(HOSTILE_LINES))
    assert_import_refused_bad_lines(cli, cli("create", "--from-file", "-", stdin=content), bad, len(HOSTILE_LINES))


def test_a_non_utf8_line_deep_in_a_large_import_costs_only_that_line(cli: Cli, tmp_path: Path) -> None:
    """Past the first read buffer and the first batch of 10,000: the lines after it are still created."""
    lines = [spec_line(id=f"ok-{n}") for n in range(12_500)]
    lines.insert(11_500, b'{"url": "http://127.0.0.1:9/\xff", "in": "1h"}')
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = cli("create", "--from-file", str(path))
    assert_refused(done, stdout_empty=False)
    out = done.stdout.splitlines()
    errors = [json.loads(line) for line in out if b'"error"' in line]
    assert [e["line"] for e in errors] == [11_501] and "UTF-8" in errors[0]["error"], errors
    assert b'"error"' in out[11_500] and json.loads(out[11_501])["timerId"] == "ok-11500"  # in input order
    store = SqliteStore(str(cli.db))
    try:
        assert sum(store.counts().values()) == 12_500
    finally:
        store.close()

"""Corrupt rows: a row no longer a valid timer (edited by hand, written by another tool), on every backend, and
``stores/rows.py``'s tolerant decoder that reads it.

Such a row reads as Failed with the corruption in lastError, and claim_due fails it for good instead of
handing it to (and crashing) its runner. ``store`` is every backend, as in the contract suite
(``tests/fixtures_stores.py``); the decoder is driven with arbitrary values by hypothesis.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures_stores import (
    SEC,
    T0,
    every_backend,  # noqa: F401 (the fixture `store` here: every backend)
    ids,
    make,
    plant,
    raw,
)
from timerctl import changes
from timerctl.model import Conflict, Status, Timer
from timerctl.stores.base import Store
from timerctl.stores.rows import CORRUPT, decode_row
from timerctl.stores.sqlite import _row, _stored_instant, to_ms

CORRUPTIONS = [
    pytest.param({"payload": "{not json"}, "payload is not valid JSON (Expecting property name", id="payload"),
    pytest.param(
        {"status": "Bogus"},
        "status 'Bogus' is not one of Scheduled, Running, Retrying, Finished, Failed, Cancelled",
        id="status",
    ),
    pytest.param({"expiryTime": "soon"}, "expiryTime 'soon' is not an instant", id="instant-text"),
    pytest.param({"expiryTime": 2**62}, f"expiryTime {2**62} is not an instant", id="instant-out-of-range"),
    pytest.param({"attempts": "many"}, "attempts 'many' is not a non-negative count", id="attempts"),
    pytest.param({"webhookUrl": b"\xff"}, "webhookUrl b'\\xff' is not text", id="url-bytes"),
    pytest.param({"revision": "two"}, "revision 'two' is not a non-negative count", id="revision"),
    pytest.param({"deliveryCount": -1}, "deliveryCount -1 is not a non-negative count", id="delivery-count"),
    pytest.param({"endedAt": "yesterday"}, "endedAt 'yesterday' is not an instant", id="ended"),
    pytest.param({"onFailureUrl": b"\xfe"}, "onFailureUrl b'\\xfe' is not text", id="failure-url"),
]


@pytest.mark.parametrize(("raw", "why"), CORRUPTIONS)
def test_a_corrupt_row_reads_as_failed_naming_the_corruption(store: Store, raw: dict[str, Any], why: str) -> None:
    store.insert_many([make("good", T0 + SEC), make("bad", T0, payload={"k": 1}, attempts=2)])
    plant(store, "bad", **raw)
    got = store.get("bad")
    assert got is not None
    assert got.status is Status.FAILED
    assert got.last_error is not None and got.last_error.startswith("stored timer is corrupt: ")
    assert why in got.last_error and "\n" not in got.last_error
    assert (got.lease_owner, got.lease_until) == (None, None)
    listed = {t.timer_id: t for t in store.find()}
    assert listed["bad"] == got and listed["good"] == make("good", T0 + SEC)
    assert sum(store.counts().values()) == 2
    with pytest.raises(Conflict, match="Failed"):
        store.cancel("bad", T0)


def test_a_cancel_rewrites_only_the_fields_it_changes(store: Store) -> None:
    """Another tool's payload text (valid JSON, spaced) is still what it wrote after a cancel."""
    store.insert(make("a", payload={"k": 1}))
    plant(store, "a", payload='{ "k" : 1 }')
    assert store.cancel("a", T0) == changes.cancel(make("a", payload={"k": 1}), T0)
    assert raw(store, "a", "payload") == '{ "k" : 1 }'
    assert raw(store, "a", "status") == "Cancelled"


def test_modify_never_writes_over_a_corrupt_row(store: Store) -> None:
    store.insert(make("bad", payload={"k": 1}))
    plant(store, "bad", payload="{not json")
    before = store.get("bad")
    with pytest.raises(Conflict, match=r"timer bad is stored corrupt \(payload is not valid JSON .*\); it can be read"):
        store.modify("bad", lambda t: replace(t, status=Status.SCHEDULED, last_error=None))
    assert store.get("bad") == before
    assert store.modify("bad", lambda t: t) == before, "reading it through modify is fine"


@pytest.mark.parametrize(("raw", "why"), CORRUPTIONS)
def test_claim_due_fails_a_corrupt_row_for_good_and_claims_the_rest(
    store: Store, raw: dict[str, Any], why: str
) -> None:
    store.insert_many([make("a", T0 - SEC), make("bad", T0), make("c", T0 + SEC)])
    plant(store, "bad", **raw)
    if "status" in raw:  # a status no timer has is never due: make the row claimable the other way
        plant(store, "bad", status="Scheduled", payload="{not json")
        why = "payload is not valid JSON"
    claimed = store.claim_due("r1", T0, T0 + SEC, T0 + 30 * SEC, 10)
    assert ids(claimed) == ["a", "c"]
    got = store.get("bad")
    assert got is not None and got.status is Status.FAILED and got.last_error is not None
    assert why in got.last_error
    assert got.ended_at == T0, "it ended when the claim failed it: retention deletes it in time"
    # Written back, not only read so: the stored status is Failed, and no later claim sees the row.
    assert store.counts()[Status.FAILED] == 1
    assert store.claim_due("r2", T0 + SEC, T0 + timedelta(days=1), T0 + timedelta(days=2), 10) == []


def test_claim_due_fails_a_corrupt_row_whose_lease_expired(store: Store) -> None:
    store.insert(make("bad", T0, status=Status.RUNNING, lease_owner="dead", lease_until=T0))
    plant(store, "bad", payload="[1,")
    assert store.claim_due("r1", T0 + SEC, T0 + SEC, T0 + 30 * SEC, 10) == []
    got = store.get("bad")
    assert got is not None and got.status is Status.FAILED and got.lease_owner is None
    assert store.counts()[Status.FAILED] == 1


# --- the decoder itself ----------------------------------------------------------------------------------

#: A stored row in ``Timer``'s field order (``rows.decode_row``'s): all 16 fields, each decodable.
GOOD_ROW = (
    "t",
    "https://h.example/x",
    to_ms(T0),
    to_ms(T0),
    "Running",
    '{"a":1}',
    2,
    None,
    "e",
    to_ms(T0),
    "r",
    None,
    3,
    to_ms(T0),
    5,
    "https://ops.example/f",
)
FIELDS = len(GOOD_ROW)
junk = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.sampled_from(["Scheduled", "Running", "Retrying", "{", "[1]", "null"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, FIELDS - 1), junk), max_size=4))
def test_decode_row_never_raises_and_says_why_whenever_it_fails_a_row(changes: list[tuple[int, object]]) -> None:
    row = list(GOOD_ROW)
    for index, value in changes:
        row[index] = value
    timer, corruption = decode_row(row, _stored_instant)
    if corruption is None:  # then every value was taken as stored (a payload "null" is no payload)
        stored = _row(timer)
        assert [stored[i] for i in range(FIELDS) if i != 5] == [row[i] for i in range(FIELDS) if i != 5]
    else:
        assert timer.status is Status.FAILED and timer.last_error == CORRUPT + corruption
        assert "\n" not in corruption and len(timer.last_error) <= 600
        assert (timer.lease_owner, timer.lease_until) == (None, None)


def test_decode_row_of_a_good_row_is_its_timer() -> None:
    timer, corruption = decode_row(GOOD_ROW, _stored_instant)
    assert corruption is None
    assert timer == Timer(
        "t",
        "https://h.example/x",
        T0,
        T0,
        Status.RUNNING,
        {"a": 1},
        2,
        None,
        "e",
        T0,
        "r",
        None,
        3,
        T0,
        5,
        "https://ops.example/f",
    )


@pytest.mark.parametrize(
    ("index", "value", "why"),
    [
        pytest.param(12, -1, "revision -1 is not a non-negative count", id="revision"),
        pytest.param(13, "soon", "endedAt 'soon' is not an instant (not integer milliseconds)", id="ended"),
        pytest.param(14, 2**64, f"deliveryCount {2**64} is not a non-negative count", id="delivery-count"),
        pytest.param(15, b"x", "onFailureUrl b'x' is not text", id="failure-url"),
    ],
)
def test_decode_row_names_a_bad_field_of_a_timer_s_later_life(index: int, value: object, why: str) -> None:
    row = list(GOOD_ROW)
    row[index] = value
    timer, corruption = decode_row(row, _stored_instant)
    assert corruption == why
    assert (timer.status, timer.last_error, timer.timer_id) == (Status.FAILED, CORRUPT + why, "t")
    # What could be decoded is kept (the count of attempts, the end), what could not is a placeholder.
    assert timer.delivery_count == (0 if index == 14 else 5)
    assert timer.revision == (0 if index == 12 else 3)
    assert timer.ended_at == (None if index == 13 else T0)
    assert timer.on_failure_url is None, "a corrupt timer never calls for help: it did not fail delivering"

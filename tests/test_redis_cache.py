"""RedisCache against a real Redis (``redis_url``) and against servers that are down or hung; its redaction."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
import redis

from tests.factories import make_timer
from tests.hostile_servers import RawServer
from timerctl.cache.redis import RedisCache
from timerctl.model import BackendUnavailable, InvalidInput, Status, Timer, utc

PREFIX = "timerctl-test:"
GRACE_S = 60
GRACE = timedelta(seconds=GRACE_S)


@pytest.fixture
def now() -> datetime:
    return utc(datetime.now(UTC))


@pytest.fixture
def new_timer(now: datetime) -> Callable[..., Timer]:
    """``new_timer(timer_id="t-1", expiry=...)``: created ``now``, expiring 600 s later unless told otherwise."""
    return partial(
        make_timer, expiry=now + timedelta(seconds=600), url="https://hooks.example.com/fire?x=1", created_at=now
    )


@pytest.fixture
def warnings_seen() -> list[str]:
    return []


@pytest.fixture
def cache(redis_url: str, warnings_seen: list[str]) -> Iterator[RedisCache]:
    c = RedisCache(redis_url, grace=GRACE, warn=warnings_seen.append, prefix=PREFIX)
    yield c
    c.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_put_get_round_trips_every_field(cache: RedisCache, now: datetime, new_timer: Callable[..., Timer]) -> None:
    timer = replace(
        new_timer("order-42:reminder"),
        status=Status.RUNNING,
        payload={"order": 42, "tags": ["a", "ü"], "nested": {"ok": True, "n": None}},
        attempts=3,
        fired_at=now + timedelta(seconds=1),
        last_error="HTTP 503 from hooks.example.com",
        due_at=now + timedelta(seconds=900),
    )
    cache.put(timer, now)
    got = cache.get("order-42:reminder")
    assert got is not None
    assert got.to_record() == timer.to_record()
    # The lease is runner-side state and not part of the record, so the cached copy has none.
    assert got == replace(timer, lease_owner=None, lease_until=None)


def test_value_is_the_timer_record_under_the_prefixed_key(
    cache: RedisCache, client: redis.Redis, now: datetime, new_timer: Callable[..., Timer]
) -> None:
    timer = new_timer()
    cache.put(timer, now)
    raw = client.get(f"{PREFIX}timer:t-1")
    assert isinstance(raw, bytes)
    assert Timer.from_record(json.loads(raw)) == timer
    assert client.keys("timerctl:*") == []


def test_ttl_is_time_to_expiry_plus_grace(
    cache: RedisCache, client: redis.Redis, now: datetime, new_timer: Callable[..., Timer]
) -> None:
    cache.put(new_timer(), now)
    assert 600 + GRACE_S - 5 <= client.ttl(f"{PREFIX}timer:t-1") <= 600 + GRACE_S


@pytest.mark.parametrize("status", [Status.FINISHED, Status.FAILED, Status.CANCELLED])
def test_final_timer_is_kept_for_the_grace_only(
    cache: RedisCache, client: redis.Redis, now: datetime, status: Status, new_timer: Callable[..., Timer]
) -> None:
    cache.put(replace(new_timer(expiry=now + timedelta(seconds=86400)), status=status), now)
    assert GRACE_S - 5 <= client.ttl(f"{PREFIX}timer:t-1") <= GRACE_S


def test_ttl_is_at_least_one_second(
    redis_url: str, client: redis.Redis, now: datetime, new_timer: Callable[..., Timer]
) -> None:
    c = RedisCache(redis_url, grace=timedelta(0), warn=pytest.fail, prefix=PREFIX)
    c.put(new_timer(expiry=now + timedelta(seconds=-3600)), now)
    c.put(replace(new_timer("done"), status=Status.FINISHED), now)
    c.close()
    assert client.ttl(f"{PREFIX}timer:t-1") == 1
    assert client.ttl(f"{PREFIX}timer:done") == 1


def test_put_overwrites_with_the_newer_state(cache: RedisCache, now: datetime, new_timer: Callable[..., Timer]) -> None:
    timer = new_timer()
    cache.put(timer, now)
    cache.put(replace(timer, status=Status.CANCELLED), now)
    got = cache.get("t-1")
    assert got is not None and got.status is Status.CANCELLED


def test_miss_returns_none(cache: RedisCache, warnings_seen: list[str]) -> None:
    assert cache.get("never-cached") is None
    assert warnings_seen == []


@pytest.mark.parametrize(
    "value",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"timerId": "t-1"}',
        b'{"timerId": "t-1", "webhookUrl": "ftp://x", "expiryTime": "2026-01-01T00:00:00Z",'
        b' "createdAt": "2026-01-01T00:00:00Z"}',
    ],
)
def test_corrupt_value_is_a_miss_and_deleted(
    cache: RedisCache, client: redis.Redis, value: bytes, warnings_seen: list[str]
) -> None:
    client.set(f"{PREFIX}timer:t-1", value)
    assert cache.get("t-1") is None
    assert client.exists(f"{PREFIX}timer:t-1") == 0
    assert warnings_seen == []


def test_record_under_the_wrong_key_is_a_miss_and_deleted(
    cache: RedisCache, client: redis.Redis, now: datetime, new_timer: Callable[..., Timer]
) -> None:
    cache.put(new_timer("other"), now)
    client.copy(f"{PREFIX}timer:other", f"{PREFIX}timer:t-1")
    assert cache.get("t-1") is None
    assert client.exists(f"{PREFIX}timer:t-1") == 0
    assert cache.get("other") is not None


def test_put_many_caches_every_timer_with_its_ttl(
    cache: RedisCache, client: redis.Redis, now: datetime, new_timer: Callable[..., Timer]
) -> None:
    timers = [new_timer(f"bulk-{i}", expiry=now + timedelta(seconds=100 * (i + 1))) for i in range(50)]
    timers[7] = replace(timers[7], status=Status.CANCELLED)
    cache.put_many(iter(timers), now)
    for timer in timers:
        assert cache.get(timer.timer_id) == timer
    assert 100 + GRACE_S - 5 <= client.ttl(f"{PREFIX}timer:bulk-0") <= 100 + GRACE_S
    assert 5000 + GRACE_S - 5 <= client.ttl(f"{PREFIX}timer:bulk-49") <= 5000 + GRACE_S
    assert GRACE_S - 5 <= client.ttl(f"{PREFIX}timer:bulk-7") <= GRACE_S
    cache.put_many([], now)


def test_ping_returns_when_redis_answers(cache: RedisCache) -> None:
    cache.ping()


def test_naive_now_is_rejected(cache: RedisCache, now: datetime, new_timer: Callable[..., Timer]) -> None:
    with pytest.raises(ValueError, match="naive"):
        cache.put(new_timer(), datetime(2026, 1, 1))


def test_invalid_url_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"http://\*\*\*@host/0") as info:
        RedisCache("http://a:hunter2@host/0", grace=GRACE, warn=pytest.fail)
    assert "hunter2" not in str(info.value)


# --- Redis down -------------------------------------------------------------------------------------


def timed(call: Callable[[], object]) -> object:
    start = time.perf_counter()
    result = call()
    assert time.perf_counter() - start < 2.0
    return result


def test_unreachable_redis_degrades_with_one_warning(
    dead_redis_url: str, now: datetime, new_timer: Callable[..., Timer]
) -> None:
    seen: list[str] = []
    # retry_after=0 makes every call really try the dead server.
    c = RedisCache(dead_redis_url, grace=GRACE, warn=seen.append, retry_after=0)
    timer = new_timer()
    for _ in range(3):
        assert timed(lambda: c.get("t-1")) is None
        assert timed(lambda: c.put(timer, now)) is None
        assert timed(lambda: c.put_many([timer], now)) is None
    c.close()
    assert len(seen) == 1
    line = seen[0]
    assert "\n" not in line
    assert line.startswith(f"Redis at {dead_redis_url} unreachable (")
    assert line.endswith("); reading from the store")


def test_ping_raises_backend_unavailable(dead_redis_url: str) -> None:
    seen: list[str] = []
    c = RedisCache(dead_redis_url, grace=GRACE, warn=seen.append)
    with pytest.raises(BackendUnavailable, match=f"Redis at {dead_redis_url} unreachable") as info:
        timed(c.ping)
    c.close()
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 3
    assert seen == []  # ping reports by raising, not by warning


def test_password_is_redacted_in_warning_and_error(dead_redis_url: str) -> None:
    url = dead_redis_url.replace("redis://", "redis://alice:s3cr%40t@")
    seen: list[str] = []
    c = RedisCache(url, grace=GRACE, warn=seen.append)
    assert c.get("t-1") is None
    with pytest.raises(BackendUnavailable) as info:
        c.ping()
    c.close()
    expected = dead_redis_url.replace("redis://", "redis://***@")
    assert len(seen) == 1 and f"Redis at {expected} unreachable" in seen[0]
    for text in (seen[0], str(info.value)):
        assert "s3cr" not in text and "alice" not in text


def test_wrong_password_on_a_live_redis_degrades(redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://nobody:wrong-secret@")
    seen: list[str] = []
    c = RedisCache(url, grace=GRACE, warn=seen.append, prefix=PREFIX)
    assert c.get("t-1") is None
    with pytest.raises(BackendUnavailable):
        c.ping()
    c.close()
    assert len(seen) == 1 and "wrong-secret" not in seen[0] and "***@" in seen[0]


def test_hung_redis_costs_a_bounded_time_then_is_skipped(
    servers: Callable[..., RawServer], now: datetime, new_timer: Callable[..., Timer]
) -> None:
    hung = servers()  # accepts connections and never answers
    port, accepted = hung.port, hung.accepted
    clock = [1000.0]
    seen: list[str] = []
    c = RedisCache(
        f"redis://127.0.0.1:{port}/0",
        grace=GRACE,
        warn=seen.append,
        retry_after=30,
        monotonic=lambda: clock[0],
    )
    assert timed(lambda: c.get("t-1")) is None
    tried = len(accepted)
    assert tried >= 1
    # Within retry_after the server is not contacted again: a bulk import costs one timeout, not one each.
    for i in range(100):
        c.put(new_timer(f"t-{i}"), now)
    assert c.get("t-1") is None
    assert len(accepted) == tried
    clock[0] += 31
    assert timed(lambda: c.get("t-1")) is None
    assert len(accepted) > tried
    c.close()
    assert len(seen) == 1 and "unreachable (Timeout" in seen[0]


def test_redis_errors_mask_the_password_in_every_form() -> None:
    encoded = "p%40ss%2Fword"  # p@ss/word, percent-encoded as a URL needs it
    url = f"redis://u:{encoded}@127.0.0.1:1/0?password=other"
    cache = RedisCache(url, grace=timedelta(seconds=1), warn=lambda _: None)
    assert cache._reason(ValueError(f"echo p@ss/word {encoded} other")) == "ValueError: echo *** *** ***"
    cache.close()

"""``TimerService`` (``service.py``), the one client-side entry the CLI and the API call: its clock, its backends,
and the cache and queue behind a create, a get and a cancel.

In-process where a test holds the clock or the service; through the ``timerctl`` command line where the
behaviour is distributed mode's, on Kafka (Tansu) and Redis (the ``distributed_env`` of
``tests/fixtures_daemons.py``). Create idempotency (``Created.new``) is proven through the front doors, where
a repeated ``--id`` or ``timerId`` answers: ``test_cli_timers.py``, ``test_api.py`` and, under fifty racing
clients, ``test_api_limits.py``; batched ``--from-file`` creates in ``test_cli_timers.py`` and the reliability suite.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from tests.factories import settings_for, stored_timers, timerctl
from tests.fixtures_api import OLD_BODY
from tests.fixtures_daemons import Daemons
from tests.fixtures_http import Receiver, wait_until
from timerctl.api import create_app
from timerctl.config import Settings
from timerctl.model import Status, utc
from timerctl.service import TimerService
from timerctl.spec import build_spec
from timerctl.stores.sqlite import SqliteStore

URL = "http://127.0.0.1:9/hook"


# --- the clock and the backends -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "local_now",
    [datetime(2026, 3, 28, 12, 0), datetime(2026, 10, 24, 12, 0)],
    ids=["across-spring-forward", "across-fall-back"],
)
def test_a_one_day_delay_across_a_dst_change_is_exactly_86400_seconds(
    tmp_path: Path, berlin: ZoneInfo, local_now: datetime
) -> None:
    """Durations are absolute: ``--in 1d`` created at noon the day before a DST change expires 86,400 s later
    in UTC, which on the local wall clock is 13:00 (spring) or 11:00 (autumn), not noon again."""
    zone: tzinfo = berlin
    created = local_now.replace(tzinfo=zone)
    spec = build_spec(URL, zone, delay="1d")
    with TimerService(Settings(db=str(tmp_path / "timers.db")), clock=lambda: created.astimezone(UTC)) as svc:
        timer = svc.create(spec).timer
    assert timer.expiry_time - timer.created_at == timedelta(seconds=86_400)
    stored = {t.timer_id: t for t in stored_timers(tmp_path / "timers.db")}
    assert stored[timer.timer_id].expiry_time == utc(created) + timedelta(days=1)
    wall = timer.expiry_time.astimezone(zone)
    assert wall.date() == local_now.date() + timedelta(days=1)
    assert wall.hour == (13 if local_now.month == 3 else 11)


def test_concurrent_first_requests_share_one_set_of_backends(tmp_path: Path) -> None:
    service = TimerService(settings_for(tmp_path))
    start = threading.Barrier(16)
    statuses: list[int] = []
    with TestClient(create_app(service.settings, service)) as client:

        def post(n: int) -> None:
            start.wait()
            statuses.append(client.post("/v1/timer", json={**OLD_BODY, "timerId": f"t{n}"}).status_code)

        threads = [threading.Thread(target=post, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    try:
        assert statuses == [201] * 16
        assert len(service.list()) == 16
        assert len(service._closers) == 3, "each backend opened once: store, queue and cache"
    finally:
        service.close()


# --- distributed mode: the cache and the queue behind each command ---------------------------------------


def test_get_right_after_create_before_any_consumer(
    distributed_env: dict[str, str], receiver: Receiver, store: SqliteStore
) -> None:
    env = distributed_env
    created = timerctl(env, "create", "--url", receiver.url(), "--in", "1h", "--json")
    assert created.returncode == 0, created.stderr
    timer_id = json.loads(created.stdout)["timerId"]
    got = timerctl(env, "get", timer_id, "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert data["timerId"] == timer_id and data["timerStatus"] == "Scheduled"
    assert 3590 <= data["timeLeft"] <= 3600
    assert store.get(timer_id) is None, "nothing consumed yet: the read came from Redis"


def test_cancel_before_the_consumer_saw_the_create_never_fires(
    distributed_env: dict[str, str], daemons: Daemons, receiver: Receiver, store: SqliteStore
) -> None:
    env = distributed_env
    doomed = json.loads(timerctl(env, "create", "--url", receiver.url("/doomed"), "--in", "2s", "--json").stdout)
    cancelled = timerctl(env, "cancel", doomed["timerId"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["timerStatus"] == "Cancelled"
    # A sentinel due at the same time, created after: once it fired, the doomed one had its chance too.
    sentinel = json.loads(timerctl(env, "create", "--url", receiver.url("/sentinel"), "--in", "2s", "--json").stdout)
    daemons.start("serve", "consumer")
    daemons.start("serve", "runner")
    receiver.wait_for(1, timeout=30, path="/sentinel")
    wait_until(lambda: store.get(sentinel["timerId"]) is not None, message="sentinel stored")
    assert [r for r in receiver.requests if r.path == "/doomed"] == []
    timer = store.get(doomed["timerId"])
    assert timer is not None and timer.status is Status.CANCELLED
    got = json.loads(timerctl(env, "get", doomed["timerId"], "--json").stdout)
    assert got["timerStatus"] == "Cancelled"


def test_redis_down_create_and_get_work_with_one_warning(distributed_env: dict[str, str], dead_redis_url: str) -> None:
    env = {**distributed_env, "TIMERCTL_REDIS_URL": dead_redis_url}
    del env["TIMERCTL_KAFKA_BOOTSTRAP"]  # straight into the store, so get can find it without a consumer
    created = timerctl(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m", "--json")
    assert created.returncode == 0, created.stderr
    warnings = created.stderr.strip().splitlines()
    assert len(warnings) == 1 and "Redis" in warnings[0] and warnings[0].startswith("warning")
    timer_id = json.loads(created.stdout)["timerId"]
    got = timerctl(env, "get", timer_id, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["timerId"] == timer_id
    assert len(got.stderr.strip().splitlines()) == 1

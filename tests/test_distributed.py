"""Distributed mode end to end with real processes: Kafka (Tansu), Redis, consumer and runner daemons.

The shared store is the embedded SQLite file (no MongoDB server runs here); the broker is the
session's Tansu and the cache the real Redis on its own DB.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures_daemons import Daemons, run
from tests.fixtures_http import Receiver, wait_until
from tests.fixtures_kafka import TansuBroker, free_port
from timerctl.model import Status
from timerctl.stores.sqlite import SqliteStore


def test_thousand_timers_from_file_fire_exactly_once(
    env: dict[str, str], daemons: Daemons, receiver: Receiver, tmp_path: Path, shared_store: SqliteStore
) -> None:
    lines = [json.dumps({"url": receiver.url("/bulk"), "in": "3s", "payload": {"n": i}}) for i in range(1000)]
    spec_file = tmp_path / "timers.jsonl"
    spec_file.write_text("\n".join(lines) + "\n")
    result = run(env, "create", "--from-file", str(spec_file))
    assert result.returncode == 0, result.stderr
    created = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(created) == 1000 and all(c["timerStatus"] == "Scheduled" for c in created)
    ids = {c["timerId"] for c in created}

    daemons.start("consumer")
    daemons.start("runner")
    got = receiver.wait_for(1000, timeout=60, path="/bulk")
    wait_until(lambda: shared_store.counts()[Status.FINISHED] == 1000, timeout=20, message="1000 Finished")
    counts = Counter(r.json["timerId"] for r in receiver.requests)
    assert set(counts) == ids
    assert max(counts.values()) == 1, "a timer fired twice"
    assert len(got) == 1000
    for request in got:
        expiry = next(c["expiryTime"] for c in created if c["timerId"] == request.json["timerId"])
        assert request.json["expiryTime"] == expiry


def test_get_right_after_create_before_any_consumer(
    env: dict[str, str], receiver: Receiver, shared_store: SqliteStore
) -> None:
    created = run(env, "create", "--url", receiver.url(), "--in", "1h", "--json")
    assert created.returncode == 0, created.stderr
    timer_id = json.loads(created.stdout)["timerId"]
    got = run(env, "get", timer_id, "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert data["timerId"] == timer_id and data["timerStatus"] == "Scheduled"
    assert 3590 <= data["timeLeft"] <= 3600
    assert shared_store.get(timer_id) is None, "nothing consumed yet: the read came from Redis"


def test_cancel_before_the_consumer_saw_the_create_never_fires(
    env: dict[str, str], daemons: Daemons, receiver: Receiver, shared_store: SqliteStore
) -> None:
    doomed = json.loads(run(env, "create", "--url", receiver.url("/doomed"), "--in", "2s", "--json").stdout)
    cancelled = run(env, "cancel", doomed["timerId"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["timerStatus"] == "Cancelled"
    # A sentinel due at the same time, created after: once it fired, the doomed one had its chance too.
    sentinel = json.loads(run(env, "create", "--url", receiver.url("/sentinel"), "--in", "2s", "--json").stdout)
    daemons.start("consumer")
    daemons.start("runner")
    receiver.wait_for(1, timeout=30, path="/sentinel")
    wait_until(lambda: shared_store.get(sentinel["timerId"]) is not None, message="sentinel stored")
    assert [r for r in receiver.requests if r.path == "/doomed"] == []
    timer = shared_store.get(doomed["timerId"])
    assert timer is not None and timer.status is Status.CANCELLED
    got = json.loads(run(env, "get", doomed["timerId"], "--json").stdout)
    assert got["timerStatus"] == "Cancelled"


def test_status_changes_by_runners_are_visible_through_the_cache(
    env: dict[str, str], daemons: Daemons, receiver: Receiver
) -> None:
    timer = json.loads(run(env, "create", "--url", receiver.url(), "--in", "1s", "--json").stdout)
    daemons.start("consumer")
    daemons.start("runner")
    receiver.wait_for(1, timeout=30)

    def finished() -> bool:
        got = run(env, "get", timer["timerId"], "--json")
        return json.loads(got.stdout)["timerStatus"] == "Finished"

    wait_until(finished, timeout=15, interval=0.2, message="get to show Finished")


def test_create_exits_3_fast_when_kafka_is_down(env: dict[str, str], private_kafka_broker: TansuBroker) -> None:
    private_kafka_broker.stop()
    env = {**env, "TIMERCTL_KAFKA_BOOTSTRAP": f"127.0.0.1:{private_kafka_broker.port}"}
    started = time.monotonic()
    result = run(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m", "--json")
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert elapsed < 10
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")


def test_kafka_never_there_exits_3(env: dict[str, str]) -> None:
    env = {**env, "TIMERCTL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    result = run(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m")
    assert result.returncode == 3 and result.stderr.startswith("error:")


def test_redis_down_create_and_get_work_with_one_warning(env: dict[str, str], dead_redis_url: str) -> None:
    env = {**env, "TIMERCTL_REDIS_URL": dead_redis_url}
    del env["TIMERCTL_KAFKA_BOOTSTRAP"]  # straight into the store, so get can find it without a consumer
    created = run(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m", "--json")
    assert created.returncode == 0, created.stderr
    warnings = created.stderr.strip().splitlines()
    assert len(warnings) == 1 and "Redis" in warnings[0] and warnings[0].startswith("warning")
    timer_id = json.loads(created.stdout)["timerId"]
    got = run(env, "get", timer_id, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["timerId"] == timer_id
    assert len(got.stderr.strip().splitlines()) == 1


def test_doctor_reports_each_backend_and_exits_3_when_one_is_down(env: dict[str, str], dead_redis_url: str) -> None:
    ok = run(env, "doctor", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert set(report) == {"store", "queue", "cache"}
    assert all(part["ok"] and part["rttMs"] is not None for part in report.values())
    assert report["queue"]["backend"].startswith("kafka") and report["cache"]["backend"] == "redis"
    down = run({**env, "TIMERCTL_REDIS_URL": dead_redis_url}, "doctor", "--json")
    assert down.returncode == 3
    assert json.loads(down.stdout)["cache"]["ok"] is False


@pytest.fixture
def env(distributed_env: dict[str, str]) -> dict[str, str]:
    return distributed_env

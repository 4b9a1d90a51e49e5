"""Distributed mode end to end with real processes: Kafka (Tansu), Redis, consumer and runner daemons.

The shared store is the embedded SQLite file (no MongoDB server runs here); the broker is the
session's Tansu and the cache the real Redis on its own DB. What each command does with the cache and the
queue is in ``test_service.py``, ``doctor`` in ``test_cli_doctor.py``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from tests.factories import now, timerctl
from tests.fixtures_daemons import Daemons
from tests.fixtures_http import Receiver, wait_until
from tests.fixtures_kafka import TansuBroker, is_empty, wait_fully_committed
from tests.polling import free_port
from timerctl.changes import Update
from timerctl.config import load_settings
from timerctl.model import Status, utc
from timerctl.queue.kafka import dlq_topic
from timerctl.service import TimerService
from timerctl.stores.sqlite import SqliteStore


def test_thousand_timers_from_file_fire_exactly_once(
    env: dict[str, str], daemons: Daemons, receiver: Receiver, tmp_path: Path, store: SqliteStore
) -> None:
    lines = [json.dumps({"url": receiver.url("/bulk"), "in": "3s", "payload": {"n": i}}) for i in range(1000)]
    spec_file = tmp_path / "timers.jsonl"
    spec_file.write_text("\n".join(lines) + "\n")
    result = timerctl(env, "create", "--from-file", str(spec_file))
    assert result.returncode == 0, result.stderr
    created = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(created) == 1000 and all(c["timerStatus"] == "Scheduled" for c in created)
    ids = {c["timerId"] for c in created}

    daemons.start("serve", "consumer")
    daemons.start("serve", "runner")
    got = receiver.wait_for(1000, timeout=60, path="/bulk")
    wait_until(lambda: store.counts()[Status.FINISHED] == 1000, timeout=20, message="1000 Finished")
    counts = Counter(r.json["timerId"] for r in receiver.requests)
    assert set(counts) == ids
    assert max(counts.values()) == 1, "a timer fired twice"
    assert len(got) == 1000
    for request in got:
        expiry = next(c["expiryTime"] for c in created if c["timerId"] == request.json["timerId"])
        assert request.json["expiryTime"] == expiry


def test_status_changes_by_runners_are_visible_through_the_cache(
    env: dict[str, str], daemons: Daemons, receiver: Receiver
) -> None:
    timer = json.loads(timerctl(env, "create", "--url", receiver.url(), "--in", "1s", "--json").stdout)
    daemons.start("serve", "consumer")
    daemons.start("serve", "runner")
    receiver.wait_for(1, timeout=30)

    def finished() -> bool:
        got = timerctl(env, "get", timer["timerId"], "--json")
        return json.loads(got.stdout)["timerStatus"] == "Finished"

    wait_until(finished, timeout=15, interval=0.2, message="get to show Finished")


def test_changes_made_while_the_create_is_queued_are_what_the_consumer_leaves_stored(
    env: dict[str, str], daemons: Daemons, store: SqliteStore
) -> None:
    """Created, then updated, fired now and cancelled before any consumer ran: the queued copy is in Redis only."""
    ids = {}
    for name in ("moved", "fired", "cancelled"):
        created = timerctl(
            env, "create", "--url", f"http://127.0.0.1:9/{name}", "--in", "1h", "--payload", "0", "--json"
        )
        assert created.returncode == 0, created.stderr
        ids[name] = json.loads(created.stdout)["timerId"]
    # TimerService rather than `timerctl update/fire`, which are being added to the CLI alongside.
    settings = load_settings(env=env)
    with TimerService(settings) as service:
        later = utc(now() + timedelta(hours=2))
        moved = service.update(
            ids["moved"], Update(expiry_time=later, webhook_url="http://127.0.0.1:9/moved-2", payload=1)
        )
        fired = service.fire(ids["fired"])
    cancelled = timerctl(env, "cancel", ids["cancelled"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr

    daemons.start("serve", "consumer")
    wait_fully_committed(settings.kafka_bootstrap, settings.topic, settings.consumer_group, 6, timeout=30)
    assert store.get(ids["moved"]) == moved
    assert (moved.revision, moved.expiry_time, moved.payload) == (1, later, 1)
    assert store.get(ids["fired"]) == replace(fired, due_at=utc(fired.due_at))  # stores keep milliseconds
    assert fired.revision == 1 and fired.due_at < fired.expiry_time
    gone = store.get(ids["cancelled"])
    assert gone is not None and (gone.status, gone.revision) == (Status.CANCELLED, 1)
    assert is_empty(settings.kafka_bootstrap, dlq_topic(settings.topic)), "a record was dead-lettered"
    got = json.loads(timerctl(env, "get", ids["moved"], "--json").stdout)
    assert (got["webhookUrl"], got["payload"], got["timerStatus"]) == ("http://127.0.0.1:9/moved-2", 1, "Scheduled")


def test_create_exits_3_fast_when_kafka_is_down(env: dict[str, str], private_kafka_broker: TansuBroker) -> None:
    private_kafka_broker.stop()
    env = {**env, "TIMERCTL_KAFKA_BOOTSTRAP": f"127.0.0.1:{private_kafka_broker.port}"}
    started = time.monotonic()
    result = timerctl(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m", "--json")
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert elapsed < 10
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")


def test_kafka_never_there_exits_3(env: dict[str, str]) -> None:
    env = {**env, "TIMERCTL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    result = timerctl(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m")
    assert result.returncode == 3 and result.stderr.startswith("error:")


@pytest.fixture
def env(distributed_env: dict[str, str]) -> dict[str, str]:
    return distributed_env

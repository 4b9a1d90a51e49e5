"""Faults and load with real processes: a timer acknowledged by ``create`` (exit 0) fires, nothing is lost.

Every test runs ``timerctl serve consumer|runner`` and the ``timerctl`` CLI as subprocesses against the
embedded SQLite store (the shared store), a Kafka-protocol broker and Redis, with ``bench/receiver.py``
as the webhook target. The scenarios themselves are in ``scenarios.py`` and ``outages.py``, which
``bench/chaos.py`` runs at full size. Random kill instants come from a seed each test prints (and names
in its failure message); ``TIMERCTL_CHAOS_SEED=N`` replays one.

The broker is Tansu, which keeps everything in memory: a restart loses every topic, record and committed
offset. A create acknowledged but not yet consumed when Tansu stops is therefore lost with this broker
(a real Kafka keeps it on disk and in its replicas). The broker test asserts what does hold here:
timers acknowledged and consumed before the outage fire during it, creates fail fast with exit 3 while
it is down, and the consumer and runner that were running reconnect by themselves afterwards.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import TopicAlreadyExistsError

from tests.factories import process_env
from tests.fixtures_kafka import TOPIC_PARTITIONS, TansuBroker, create_topics
from tests.reliability.harness import new_seed, redis_server_binary
from tests.reliability.outages import broker_outage_scenario, receiver_outage_scenario, redis_outage_scenario
from tests.reliability.scenarios import crash_scenario, load_scenario, store_stall_scenario

#: Delivery bound of each runner in the crash tests (its POSTs in flight at once).
CONCURRENCY = 32
CRASH_TIMERS = 1500
CRASH_KILLS = 3


def show(row: dict[str, Any]) -> str:
    """The scenario's measurements as one JSON line (printed, and the message of a failed assert)."""
    line = json.dumps(row, default=str)
    print(line)
    return line


TOPIC = "faults"


def make_topics(broker: TansuBroker) -> None:
    """The test topic and its dead-letter topic (already there when Tansu auto-created them: fine)."""
    with suppress(TopicAlreadyExistsError):
        create_topics(broker.bootstrap, {TOPIC: TOPIC_PARTITIONS, f"{TOPIC}.dlq": 1})


@pytest.fixture
def kafka_env(tmp_path: Path, private_kafka_broker: TansuBroker, redis_url: str) -> dict[str, str]:
    """Settings on a broker of the test's own, not the session's.

    Tansu does not always evict a member killed (or stopped) in the middle of a rebalance: that ghost can
    stay its group's leader and keep every later member of the group without partitions (seen for minutes;
    Kafka evicts it after the session timeout, KAFKA-12890). These tests kill daemons on purpose, so they
    keep their groups, and whatever Tansu remembers of them, away from every other test's.
    """
    make_topics(private_kafka_broker)
    return process_env(
        tmp_path, kafka_bootstrap=private_kafka_broker.bootstrap, topic=TOPIC, redis_url=redis_url, poll_interval="0.2"
    )


@pytest.mark.parametrize("target", ["consumer", "runner", "both"])
def test_sigkill_at_random_points_loses_no_acknowledged_timer(
    target: str, kafka_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL the consumer, the runner or both 3 times while 1,500 timers are created and fire."""
    seed = new_seed()
    print(f"chaos seed {seed} (replay with TIMERCTL_CHAOS_SEED={seed})")
    env = {
        **kafka_env,
        "TIMERCTL_LEASE": "2s",  # a killed runner's claims are taken over 2 s later
        "TIMERCTL_CONCURRENCY": str(CONCURRENCY),
        "TIMERCTL_PER_HOST_CONCURRENCY": str(CONCURRENCY),
    }
    row = crash_scenario(env, tmp_path, target=target, timers=CRASH_TIMERS, kills=CRASH_KILLS, seed=seed)
    why = show(row)
    assert row["timers"] == CRASH_TIMERS, why
    assert row["lost"] == 0, why
    assert row["not_finished"] == 0 and row["failed"] == 0, why
    # A repeat is allowed only for a delivery a runner had sent but not yet recorded when it was killed:
    # received at most RECORD_WINDOW (1 s) before that kill, and repeated at most once per kill.
    assert row["unexplained_duplicates"] == [], why
    assert row["max_receipts"] <= 1 + (row["kills"] if target != "consumer" else 0), why
    if target == "consumer":
        assert row["duplicates"] == 0, why  # the store's idempotent insert absorbs every replayed record


def test_receiver_down_then_back_retries_with_backoff_and_delivers(tmp_path: Path, redis_url: str) -> None:
    """The receiver stops just before 200 timers fall due and starts again on the same port 8 s later.

    Stopped with SIGTERM, on which bench/receiver.py closes its socket at once and writes its receipts.
    """
    env = process_env(tmp_path, redis_url=redis_url, poll_interval="0.2")
    row = receiver_outage_scenario(env, tmp_path, timers=200, down=8.0, first_delay=0.5, max_delay=4.0)
    why = show(row)
    assert row["received_before_down"] == 0, why
    assert row["delivered"] == 200 and row["lost"] == 0 and row["duplicates"] == 0, why
    assert row["finished"] == 200 and row["failed"] == 0, why
    # 8 s down with retries after ~0.375, 0.75, 1.5, 3 s: every timer failed at least 4 times first.
    assert row["attempts_min"] >= 5, why
    assert row["store_vs_receipt_attempts_mismatched"] == 0, why
    assert row["early_retries"] == 0 and row["late_retries"] == 0, why
    gaps = [row["median_gap_s"][n] for n in (1, 2, 3, 4)]
    assert gaps == sorted(gaps) and gaps[3] > 4 * gaps[0], why
    # Back within one capped backoff (4 s) plus a poll tick.
    assert row["all_delivered_after_back_s"] <= 4.0 + 1.5, why


def test_redis_down_and_back(kafka_env: dict[str, str], tmp_path: Path) -> None:
    """Redis is only an accelerator: create and get work without it, and it is used again once back.

    A redis-server of the test's own on a free port (the machine's Redis on 6379 is shared, never stopped).
    """
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed: cannot start and stop a Redis of the test's own")
    row = redis_outage_scenario(kafka_env, tmp_path, binary)
    why = show(row)
    up = row["up: get right after create"]
    assert up["get_exit"] == 0 and up["get_status"] == "Scheduled" and not up["in_store"], why
    assert up["create_stderr"] == [] and up["get_stderr"] == [], why

    down = row["down: get right after create"]
    assert down["create_exit"] == 0, why
    assert len(down["create_stderr"]) == 1 and down["create_stderr"][0].startswith("warning:"), why
    assert "Redis" in down["create_stderr"][0], why
    # Nothing consumed yet and no cache: not found, said after the same single warning.
    assert down["get_exit"] == 1 and len(down["get_stderr"]) == 2 and "not found" in down["get_stderr"][1], why
    stored = row["down: get once stored"]
    assert stored["exit"] == 0 and len(stored["stderr_lines"]) == 1 and "Redis" in stored["stderr_lines"][0], why
    assert row["down: fired"] == "Finished", why
    assert row["runner_redis_warnings"] == 1, why

    back = row["back: get right after create"]
    assert back["create_exit"] == 0 and back["create_stderr"] == [], why
    assert back["get_exit"] == 0 and back["get_stderr"] == [] and not back["in_store"], why


def test_broker_down_and_back(private_kafka_broker: TansuBroker, kafka_env: dict[str, str], tmp_path: Path) -> None:
    """The broker stops for 6 s while 200 consumed timers wait; the daemons ride it out unrestarted.

    Tansu is memory-only (see the module docstring): after the restart the broker is empty, so the test
    creates the topic again (Tansu may already have auto-created it on the daemons' first request).
    """
    broker = private_kafka_broker
    row = broker_outage_scenario(kafka_env, tmp_path, broker, lambda: make_topics(broker), timers=200, down=6.0)
    why = show(row)
    assert row["down: create exit"] == 3 and row["down: create seconds"] < 10, why
    assert row["down: create stdout"] == "", why
    assert len(row["down: create stderr"]) == 1 and row["down: create stderr"][0].startswith("error: Kafka"), why
    assert row["fired while down"] == 201, why  # the 200 and the warm-up timer
    assert row["before: finished"] == 200 and row["before: lost"] == 0, why
    assert row["after: create exit"] == 0, why
    assert row["after: finished"] == 200 and row["after: lost"] == 0, why
    assert not row["consumer restarted"] and not row["runner restarted"], why
    assert row["duplicates"] == 0, why


def test_three_runners_two_consumers_fire_every_timer_exactly_once(kafka_env: dict[str, str], tmp_path: Path) -> None:
    """3,000 timers through Kafka due within 10 s, shared by 3 runners and 2 consumers (bench: 50,000 in 60 s)."""
    row = load_scenario(kafka_env, tmp_path, timers=3000, window=10.0, runners=3, consumers=2)
    why = show(row)
    assert row["timers"] == 3000, why
    assert row["delivered"] == 3000 and row["lost"] == 0, why
    assert row["duplicates"] == 0, why
    assert row["finished"] == 3001 and row["failed"] == 0, why
    assert row["daemons_exited"] == {}, why
    assert row["min_ms"] > -10, why  # never early (beyond the wall clock's drift against the loop's monotonic one)
    # A sanity bound far above what this machine measures (p99 ~0.1 s); bench/chaos.py reports the real one.
    assert row["p99_ms"] < 5000, why


def test_store_locked_longer_than_the_lease_fires_nothing_twice(tmp_path: Path, redis_url: str) -> None:
    """Another connection holds SQLite's write lock 3 s (lease 2 s) twice while a runner fires 300 timers.

    Regression: a runner re-claimed its own timers whose lease lapsed while their outcome waited for the
    store, and POSTed them again (~190 repeats in one run of four before the fix).
    """
    env = process_env(tmp_path, redis_url=redis_url, poll_interval="0.2")
    row = store_stall_scenario(env, tmp_path, timers=300, stalls=2, hold=3.0, lease=2.0)
    why = show(row)
    assert row["delivered"] == 300 and row["lost"] == 0, why
    assert row["finished"] == 300 and row["failed"] == 0, why
    assert row["duplicates"] == 0, why

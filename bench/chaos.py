"""Chaos: the reliability scenarios at full size — crashes, outages and load — counting every timer.

    python bench/chaos.py                                  # every scenario, full size (about 8 min here)
    python bench/chaos.py --only crash,load                # some of them
    python bench/chaos.py --timers 2000 --load-timers 5000 --load-window 20 --down 10   # smaller
    TIMERCTL_CHAOS_SEED=123 python bench/chaos.py --only crash                         # replay kill instants
    python bench/chaos.py --keep /tmp/chaos                # keep every store, daemon log and receipt

Scenarios (``tests/reliability/scenarios.py`` and ``outages.py``; ``test_faults.py`` there runs them at CI size):

- crash consumer|runner|both: SIGKILL at seeded random instants while 10,000 timers are created through
  Kafka and fall due over a few seconds, restart; count lost and duplicated deliveries.
- receiver down: the webhook receiver killed for 30 s and started again on its port; attempt gaps.
- redis down: create/get without Redis, then the cache used again once it is back.
- broker down: the broker stopped for 30 s under a running consumer and runner (Tansu is memory-only:
  see test_faults.py for what that means for creates not yet consumed).
- store locked: another connection holds SQLite's write lock 5 s (3 times, lease 2 s) under a runner.
- load: 3 runners and 2 consumers sharing 50,000 timers due within one minute; p50/p99 lateness.

Each Kafka scenario gets a Tansu broker of its own (see test_faults.py's ``kafka_env`` for why), or a new
topic on ``$TIMERCTL_TEST_KAFKA_BOOTSTRAP`` when that is set (the broker scenario always takes a Tansu);
Redis is a ``redis-server`` of the bench's own on a free port. Prints a table and writes every
measurement to bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis as redis_client
from common import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka.errors import TopicAlreadyExistsError

from tests.factories import process_env
from tests.fixtures_kafka import TOPIC_PARTITIONS, TansuBroker, create_topics, start_broker
from tests.reliability import harness as h
from tests.reliability import outages, scenarios

SCENARIOS = ("crash", "receiver", "redis", "broker", "store", "load")
CONCURRENCY = 32
COLUMNS = ["scenario", "timers", "kills", "lost", "duplicates", "p50_ms", "p99_ms", "max_ms", "recovery_s", "seconds"]

#: Where scenarios keep their store, logs and receipts: a temporary folder each, unless --keep DIR.
KEEP: Path | None = None


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    if KEEP is not None:
        path = KEEP / f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}"
        path.mkdir(parents=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="timerctl-chaos-") as tmp:
        yield Path(tmp)


def make_topics(bootstrap: str, topic: str) -> None:
    with contextlib.suppress(TopicAlreadyExistsError):  # Tansu auto-creates a topic on first use
        create_topics(bootstrap, {topic: TOPIC_PARTITIONS, f"{topic}.dlq": 1})


@contextlib.contextmanager
def kafka(tansu: bool = False) -> Iterator[tuple[str, str, TansuBroker | None]]:
    """(bootstrap, topic, the broker when it is ours): a fresh Tansu unless $TIMERCTL_TEST_KAFKA_BOOTSTRAP."""
    given = os.environ.get("TIMERCTL_TEST_KAFKA_BOOTSTRAP")
    topic = f"chaos-{uuid.uuid4().hex[:8]}"
    if given and not tansu:
        make_topics(given, topic)
        yield given, topic, None
        return
    broker = start_broker()
    try:
        make_topics(broker.bootstrap, topic)
        yield broker.bootstrap, topic, broker
    finally:
        broker.stop()


def flush_redis(url: str) -> None:
    """Empty the bench's own Redis between scenarios, so each starts with a cold cache."""
    if url:
        client = redis_client.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()


def timed(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s row with its wall time; a scenario that could not finish is a row with its error."""
    started = time.monotonic()
    try:
        row = fn()
    except AssertionError as exc:
        row = {"scenario": label, "error": str(exc)[:500]}
    row["seconds"] = round(time.monotonic() - started, 1)
    print({k: v for k, v in row.items() if not isinstance(v, list | dict) or k == "kill_at_s"}, flush=True)
    return row


def planned(args: argparse.Namespace, seed: int, redis_url: str) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(label, run) for every scenario asked for, in order."""

    def env_for(work: Path, bootstrap: str = "", topic: str = "", **extra: str) -> dict[str, str]:
        flush_redis(redis_url)
        settings = {"kafka_bootstrap": bootstrap, "topic": topic, "redis_url": redis_url, "poll_interval": "0.2"}
        return process_env(work, **settings, **extra)

    def crash(target: str, n: int) -> dict[str, Any]:
        with workdir() as work, kafka() as (bootstrap, topic, _):
            env = env_for(
                work, bootstrap, topic, lease="2s", concurrency=str(CONCURRENCY), per_host_concurrency=str(CONCURRENCY)
            )
            return scenarios.crash_scenario(
                env,
                work,
                target=target,
                timers=args.timers,
                kills=args.kills,
                seed=seed + n,
                lead=4.0,
                spread=6.0,
                settle_timeout=180,
            )

    def receiver() -> dict[str, Any]:
        spread = max(1.0, min(5.0, args.down - 2))  # every first attempt must fail while it is down
        with workdir() as work:
            return outages.receiver_outage_scenario(
                env_for(work), work, timers=1000, down=args.down, spread=spread, first_delay=0.5, max_delay=8.0
            )

    def redis_down() -> dict[str, Any]:
        binary = h.redis_server_binary()
        assert binary is not None, "redis-server is not installed"
        with workdir() as work, kafka() as (bootstrap, topic, _):
            return summarize_redis(outages.redis_outage_scenario(env_for(work, bootstrap, topic), work, binary))

    def broker_down() -> dict[str, Any]:
        with workdir() as work, kafka(tansu=True) as (bootstrap, topic, broker):
            env = env_for(work, bootstrap, topic)
            return outages.broker_outage_scenario(
                env, work, broker, lambda: make_topics(bootstrap, topic), timers=2000, down=args.down
            )

    def store_locked() -> dict[str, Any]:
        with workdir() as work:
            return scenarios.store_stall_scenario(env_for(work), work, timers=3000, stalls=3, hold=5.0, lease=2.0)

    def load() -> dict[str, Any]:
        with workdir() as work, kafka() as (bootstrap, topic, _):
            env = env_for(work, bootstrap, topic)
            return scenarios.load_scenario(env, work, timers=args.load_timers, window=args.load_window)

    if "crash" in args.only:
        for n, target in enumerate(("consumer", "runner", "both")):
            yield f"crash {target}", lambda target=target, n=n: crash(target, n)
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "receiver": receiver,
        "redis": redis_down,
        "broker": broker_down,
        "store": store_locked,
        "load": load,
    }
    for name, run in runs.items():
        if name in args.only:
            yield name, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    parser.add_argument("--timers", type=int, default=10_000, help="timers per crash scenario")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per crash scenario")
    parser.add_argument("--down", type=float, default=30.0, help="seconds the receiver and the broker are down")
    parser.add_argument("--load-timers", type=int, default=50_000)
    parser.add_argument("--load-window", type=float, default=60.0, help="seconds the load timers fall due over")
    parser.add_argument("--keep", type=Path, help="keep each scenario's store, daemon logs and receipts under DIR")
    args = parser.parse_args()
    global KEEP
    KEEP = args.keep
    args.only = set(args.only.split(","))
    unknown = args.only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    seed = h.new_seed()
    print(f"chaos seed {seed} (replay with TIMERCTL_CHAOS_SEED={seed})", flush=True)

    rows: list[dict[str, Any]] = []
    binary = h.redis_server_binary()
    with workdir() as redis_dir:
        redis = h.RedisServer(binary, redis_dir) if binary else None
        try:
            if redis is not None:
                redis.start()
            for label, run in planned(args, seed, redis.url if redis is not None else ""):
                rows.append(timed(label, run))
        finally:
            if redis is not None:
                redis.stop()
    for row in rows:
        row["ok"] = verdict(row)
    report("chaos", rows, [*COLUMNS, "ok"])


def summarize_redis(row: dict[str, Any]) -> dict[str, Any]:
    """The Redis scenario's nested steps flattened into pass/fail facts for the table."""
    up, down, stored, back = (
        row["up: get right after create"],
        row["down: get right after create"],
        row["down: get once stored"],
        row["back: get right after create"],
    )
    row.update(
        {
            "timers": 3,
            "lost": 0 if row["down: fired"] == "Finished" else 1,
            "cache_used_before": up["get_exit"] == 0 and not up["in_store"],
            "create_while_down_one_warning": down["create_exit"] == 0 and len(down["create_stderr"]) == 1,
            "get_while_down_one_warning": stored["exit"] == 0 and len(stored["stderr_lines"]) == 1,
            "cache_used_after": back["get_exit"] == 0 and not back["in_store"] and back["get_stderr"] == [],
        }
    )
    return row


def verdict(row: dict[str, Any]) -> str:
    """``yes`` when the scenario kept the promise (nothing lost, repeats only where a kill explains them)."""
    if "error" in row:
        return "ERROR"
    problems = []
    if row.get("lost") or row.get("before: lost") or row.get("after: lost"):
        problems.append("lost")
    if row.get("unexplained_duplicates"):
        problems.append("duplicates outside kills")
    if row.get("max_receipts", 0) > 1 + row.get("kills", 0):
        problems.append("a timer repeated more often than it was killed")
    if row["scenario"].startswith(("receiver", "load", "broker", "store")) and row.get("duplicates"):
        problems.append("duplicates")
    if row.get("early_retries"):
        problems.append("retried sooner than the backoff")
    for key in ("cache_used_before", "create_while_down_one_warning", "get_while_down_one_warning", "cache_used_after"):
        if row.get(key) is False:
            problems.append(key)
    if row.get("consumer restarted") or row.get("runner restarted") or row.get("daemons_exited"):
        problems.append("daemon died")
    return "yes" if not problems else "NO: " + ", ".join(problems)


if __name__ == "__main__":
    main()

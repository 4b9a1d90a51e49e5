"""Outages with real processes: the webhook receiver, Redis and the broker down and back.

Like ``scenarios.py``: each returns a dict of what it measured, for ``test_faults.py`` and
``bench/chaos.py``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.factories import timerctl
from tests.polling import wait_for
from tests.reliability.harness import (
    Deliveries,
    RedisServer,
    acknowledged,
    cluster,
    percentile,
    run_tag,
    spread_specs,
    status_counts,
    timers_by_id,
    wait_all_final,
    warm_up,
    write_specs,
)
from timerctl.model import Status
from timerctl.stores.sqlite import SqliteStore

# -- the webhook receiver down and back ----------------------------------------------------------------


def fired_attempts(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, float, str]]]:
    """Timer id -> [(attempt, started, ended (unix times), status after it)] from a runner's INFO ``fired``
    log records (written once recorded, so they carry when the attempt started and how long it took)."""
    found: dict[str, list[tuple[int, float, float, str]]] = defaultdict(list)
    for e in events:
        if e.get("event") != "fired":
            continue
        attempt = int(e["message"].split(" attempt ", 1)[1].split(" ", 1)[0])
        started = datetime.fromisoformat(e["fired_at"].replace("Z", "+00:00")).timestamp()
        found[e["timer_id"]].append((attempt, started, started + float(e["duration"]), e["status"]))
    for attempts in found.values():
        attempts.sort()
    return found


def receiver_outage_scenario(
    env: dict[str, str],
    workdir: Path,
    *,
    timers: int,
    down: float,
    spread: float = 1.0,
    first_delay: float = 0.5,
    max_delay: float = 4.0,
) -> dict[str, Any]:
    """Kill the receiver just before ``timers`` timers fall due (over ``spread`` seconds), keep it down
    ``down`` seconds, start it again on the same port; the timers are retried with backoff and delivered
    once it is back.

    Creates go straight into the store (this scenario is about delivery); one runner logs every attempt.
    Returns the gaps between attempts (from the runner's log) per attempt number, and those outside the
    retry policy: ``early`` (sooner than the policy allows: a real violation) and ``late`` (later than the
    policy plus a second: the runner could not keep up, as when ~1,000 refused POSTs a second saturate it).
    """
    if down < spread + 2:
        raise ValueError(f"down ({down}s) must outlast the timers' spread ({spread}s) by 2 s: all fail first")
    env = {
        **env,
        "TIMERCTL_RETRY_FIRST_DELAY": str(first_delay),
        "TIMERCTL_RETRY_MAX_DELAY": str(max_delay),
        "TIMERCTL_MAX_ATTEMPTS": "50",
    }
    env.pop("TIMERCTL_KAFKA_BOOTSTRAP", None)
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    with cluster(env, workdir) as (fleet, receiver):
        fleet.start("runner", "runner", log_level="INFO")
        due = time.time() + 4.0  # room for the create below on a loaded machine: none may fall due before
        spec_file = write_specs(
            workdir / "outage.jsonl", spread_specs(receiver.url(), f"out-{tag}", timers, due, spread)
        )
        expiry = acknowledged(timerctl(env, "create", "--from-file", str(spec_file), timeout=60))
        time.sleep(max(0.0, due - 0.5 - time.time()))  # the scenario: down from just before they fall due
        receiver.stop()
        went_down = time.time()
        wait_for(
            lambda: _all_attempted(db, timers),
            spread + 2,
            "every timer to have failed its first attempt while the receiver is down",
        )
        time.sleep(max(0.0, went_down + down - time.time()))  # the scenario: the receiver stays down
        receiver.start()
        back = time.time()
        counts = wait_all_final(db, timers, max_delay * 2 + 30, "every timer delivered after the receiver is back")
        delivered = time.time()
        stored = timers_by_id(db)
        fleet.close()
        receiver.stop()
        attempts = fired_attempts(fleet.events("runner"))

    deliveries = Deliveries([r for r in receiver.receipts if r["incarnation"] == 2])
    before_down = [r for r in receiver.receipts if r["incarnation"] == 1]
    gaps: dict[int, list[float]] = defaultdict(list)
    early: list[str] = []
    late: list[str] = []
    for tid, tries in attempts.items():
        for (n, _, ended, _), (_, next_started, _, _) in pairwise(tries):
            # From an attempt's end to the next one's start: the next attempt's due time is set from the
            # end, so a gap is never below the drawn delay; above it by the next attempt's lateness (a poll
            # tick, scheduling, a queue at the host's bound).
            gap = next_started - ended
            gaps[n].append(gap)
            base = min(max_delay, first_delay * 2 ** (n - 1))
            text = f"{tid} attempt {n}->{n + 1}: {gap:.2f}s, policy {base / 2:.2f}-{base:.2f}s"
            if gap < base / 2 - 0.01:
                early.append(text)
            elif gap > base + 1.0:
                late.append(text)
    receipt_attempt = {r["timerId"]: r["attempt"] for r in deliveries.receipts}
    mismatched = [t for t, timer in stored.items() if receipt_attempt.get(t) != timer.attempts]
    delivered_after_back = [at - back for times in deliveries.by_id.values() for at in times]
    return {
        "scenario": f"receiver down {down:.0f}s",
        "timers": len(expiry),
        "delivered": len(deliveries.by_id),
        "lost": len(set(expiry) - set(deliveries.by_id)),
        "duplicates": sum(deliveries.duplicates().values()),
        "received_before_down": len(before_down),
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "attempts_max": max((t.attempts for t in stored.values()), default=0),
        "attempts_min": min((t.attempts for t in stored.values()), default=0),
        "median_gap_s": {n: round(percentile(g, 50), 3) for n, g in sorted(gaps.items())},
        "early_retries": len(early),
        "early_examples": early[:10],
        "late_retries": len(late),
        "late_examples": late[:10],
        "store_vs_receipt_attempts_mismatched": len(mismatched),
        "first_delivery_after_back_s": min(delivered_after_back, default=float("nan")),
        "all_delivered_after_back_s": delivered - back,
        "max_delay_s": max_delay,
    }


def _all_attempted(db: str, count: int) -> bool:
    return sum(1 for t in timers_by_id(db).values() if t.attempts >= 1) >= count


# -- Redis down and back ---------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def redis_outage_scenario(env: dict[str, str], workdir: Path, redis_binary: str) -> dict[str, Any]:
    """Stop a Redis of our own under a Kafka setup with no consumer running, then start it again.

    While it is down: ``create`` exits 0 with one warning line; ``get`` of a timer the consumer has not
    stored yet is "not found" (Redis only accelerates reads); once a consumer stored it, ``get`` works
    with one warning line and the runner fires it. Once it is back, a ``get`` right after a create, with
    no consumer running, is answered from the cache again, without a warning.
    """
    redis = RedisServer(redis_binary, workdir)
    env = {**env, "TIMERCTL_REDIS_URL": redis.url}
    db = env["TIMERCTL_DB"]
    result: dict[str, Any] = {"scenario": "redis down and back"}
    try:
        redis.start()
        with cluster(env, workdir) as (fleet, receiver):
            before = _create_and_get(env, receiver.url(), "1h")
            result["up: get right after create"] = before
            redis.stop()
            down = _create_and_get(env, receiver.url(), "2s")
            result["down: get right after create"] = down
            fleet.start("consumer", "consumer")
            fleet.start("runner", "runner")
            started = time.time()

            def readable() -> subprocess.CompletedProcess[str] | None:
                got = timerctl(env, "get", down["id"], "--json", timeout=60)
                return got if got.returncode == 0 else None

            got = wait_for(readable, 60, "get to find the timer once the consumer stored it", interval=0.2)
            result["down: get once stored"] = {
                "exit": got.returncode,
                "stderr_lines": _lines(got.stderr),
                "after_s": round(time.time() - started, 2),
            }
            wait_all_final(db, 1, 30, "the timer created while Redis was down to fire")
            result["down: fired"] = timers_by_id(db)[down["id"]].status.value
            fleet.stop("consumer")
            redis.start()
            result["back: get right after create"] = _create_and_get(env, receiver.url(), "1h")
            fleet.close()
            result["runner_redis_warnings"] = sum(
                1 for e in fleet.events("runner") if "Redis" in e.get("message", "") and e["level"] == "warning"
            )
    finally:
        redis.stop()
    return result


def _create_and_get(env: dict[str, str], url: str, delay: str) -> dict[str, Any]:
    """``create --in DELAY`` then at once ``get``: exit codes, stderr lines, and whether the store has it."""
    created = timerctl(env, "create", "--url", url, "--in", delay, "--json", timeout=60)
    assert created.returncode == 0, f"create exited {created.returncode}: {created.stderr}"
    timer_id = json.loads(created.stdout)["timerId"]
    got = timerctl(env, "get", timer_id, "--json", timeout=60)
    store = SqliteStore(env["TIMERCTL_DB"])
    try:
        in_store = store.get(timer_id) is not None
    finally:
        store.close()
    return {
        "id": timer_id,
        "create_exit": created.returncode,
        "create_stderr": _lines(created.stderr),
        "get_exit": got.returncode,
        "get_stderr": _lines(got.stderr),
        "get_status": json.loads(got.stdout)["timerStatus"] if got.returncode == 0 else None,
        "in_store": in_store,
    }


# -- the broker down and back ------------------------------------------------------------------------


def broker_outage_scenario(
    env: dict[str, str],
    workdir: Path,
    broker: Any,
    make_topics: Callable[[], None],
    *,
    timers: int,
    down: float,
) -> dict[str, Any]:
    """Stop the broker while ``timers`` acknowledged and consumed timers wait to fire, then start it again.

    ``broker`` has ``stop()``/``start()`` keeping its port (``TansuBroker``); ``make_topics`` creates the
    topic again after a restart, as an operator would on an empty broker. The consumer and the runner
    started before the outage keep running throughout.
    """
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    far_id = f"after-far-{tag}"
    result: dict[str, Any] = {"scenario": f"broker down {down:.0f}s", "timers": timers}
    with cluster(env, workdir) as (fleet, receiver):
        consumer = fleet.start("consumer", "consumer")
        runner = fleet.start("runner", "runner")
        warm_up(env, receiver, db)
        lead = down / 2 + 2
        spec_file = write_specs(
            workdir / "before.jsonl", spread_specs(receiver.url(), f"before-{tag}", timers, time.time() + lead, 1)
        )
        before = acknowledged(timerctl(env, "create", "--from-file", str(spec_file), timeout=60))
        wait_for(lambda: sum(status_counts(db).values()) >= timers + 1, 30, "the consumer to store every timer")
        broker.stop()
        went_down = time.time()
        started = time.monotonic()
        refused = timerctl(env, "create", "--url", receiver.url(), "--in", "1m", "--json", timeout=60)
        result["down: create exit"] = refused.returncode
        result["down: create seconds"] = round(time.monotonic() - started, 2)
        result["down: create stderr"] = _lines(refused.stderr)
        result["down: create stdout"] = refused.stdout
        wait_all_final(db, timers + 1, down + lead + 30, "the consumed timers to fire with the broker down")
        result["fired while down"] = sum(
            1 for t in timers_by_id(db).values() if t.fired_at is not None and t.fired_at.timestamp() < went_down + down
        )
        time.sleep(max(0.0, went_down + down - time.time()))  # the scenario: the broker stays down
        broker.start()
        make_topics()
        back = time.time()
        after_near = write_specs(
            workdir / "after.jsonl", spread_specs(receiver.url(), f"after-{tag}", timers, time.time() + 2, 1)
        )
        after = acknowledged(timerctl(env, "create", "--from-file", str(after_near), timeout=60))
        # Due beyond the runners' near-term feed window: only the consumer stores this one.
        far = timerctl(env, "create", "--url", receiver.url(), "--in", "1h", "--id", far_id, "--json", timeout=60)
        assert far.returncode == 0, far.stderr
        result["after: create exit"] = far.returncode

        def stored_far() -> bool:
            store = SqliteStore(db)
            try:
                return store.get(far_id) is not None
            finally:
                store.close()

        wait_for(stored_far, 60, "the consumer (not restarted) to store a create made after the restart")
        result["after: consumer stored a new create after_s"] = round(time.time() - back, 2)
        wait_all_final(db, 2 * timers + 1, 60, "the timers created after the restart to fire")
        result["consumer restarted"] = consumer.poll() is not None or fleet.current["consumer"] is not consumer
        result["runner restarted"] = runner.poll() is not None or fleet.current["runner"] is not runner
        stored = timers_by_id(db)
        fleet.close()
        receiver.stop()
        deliveries = Deliveries(receiver.receipts)
    for name, expiry in (("before", before), ("after", after)):
        result[f"{name}: finished"] = sum(1 for t in expiry if stored[t].status is Status.FINISHED)
        result[f"{name}: lost"] = sum(1 for t in expiry if t not in deliveries.by_id)
    result["duplicates"] = sum(deliveries.duplicates().values())
    return result

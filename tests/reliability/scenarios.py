"""Crashes, load and a stalled store with real processes: ``test_faults.py`` runs them at CI size,
``bench/chaos.py`` at full size.

Every scenario runs ``timerctl serve ...`` daemons and ``timerctl`` CLI commands as subprocesses against
one embedded SQLite store, a Kafka-protocol broker and Redis, with ``bench/receiver.py`` as the webhook
target, and returns a flat dict of what it measured (timers lost, duplicates, lateness, ...): the tests
assert on it, the bench prints it. Every process a scenario starts is ended in its ``finally``.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.factories import TIMERCTL, timerctl
from tests.reliability.harness import (
    Deliveries,
    acknowledged,
    cluster,
    end_process,
    percentile,
    run_tag,
    spread_specs,
    timers_by_id,
    wait_all_final,
    warm_up,
    write_specs,
)
from timerctl.model import Status

# -- crashes -------------------------------------------------------------------------------------------

#: A delivery received up to this long before a runner's SIGKILL may not have been recorded yet, so the
#: next runner repeats it: it was in flight, or delivered with its outcome waiting for the runner's next
#: batched store write (tens of milliseconds; up to ~0.4 s measured while two cores run seven processes).
RECORD_WINDOW = 1.0


def crash_scenario(
    env: dict[str, str],
    workdir: Path,
    *,
    target: str,
    timers: int,
    kills: int,
    seed: int,
    lead: float = 2.0,
    spread: float = 5.0,
    settle_timeout: float = 90.0,
) -> dict[str, Any]:
    """SIGKILL ``target`` (consumer, runner or both) ``kills`` times at seeded random instants while
    ``timers`` timers are created through Kafka and fire, restarting it each time.

    Expiries are spread over ``spread`` seconds starting ``lead`` seconds after the create starts; kill
    instants are uniform over the create and the firing window. Returns what was lost and duplicated.
    """
    rnd = random.Random(seed)
    tag = run_tag()
    names = {"consumer": ["consumer"], "runner": ["runner"], "both": ["consumer", "runner"]}[target]
    db = env["TIMERCTL_DB"]
    spec_file = workdir / "crash.jsonl"
    with cluster(env, workdir) as (fleet, receiver):
        write_specs(
            spec_file,
            (
                {"url": receiver.url(), "in": f"{lead + spread * i / timers:.3f}s", "id": f"crash-{tag}-{i:06d}"}
                for i in range(timers)
            ),
        )
        fleet.start("consumer", "consumer")
        fleet.start("runner", "runner")
        warmed = warm_up(env, receiver, db)
        plan = sorted((rnd.uniform(0, lead + spread), rnd.uniform(0, 1.0)) for _ in range(kills))
        started = time.time()
        create = subprocess.Popen(
            [TIMERCTL, "create", "--from-file", str(spec_file)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        kill_times: list[float] = []
        try:
            for at, down_for in plan:
                # The schedule of the scenario itself, not a wait for some state: crash at this instant.
                time.sleep(max(0.0, started + at - time.time()))
                for name in names:
                    fleet.kill(name)
                kill_times.append(time.time())
                time.sleep(down_for)
                for name in names:
                    fleet.restart(name)
            out, err = create.communicate(timeout=120)
        finally:
            end_process(create, signal.SIGKILL)
        expiry = acknowledged(subprocess.CompletedProcess(create.args, create.returncode, out, err))
        last_kill = kill_times[-1] if kill_times else started
        counts = wait_all_final(db, len(expiry) + 1, settle_timeout, f"{len(expiry)} timers to finish after the kills")
        settled = time.time()
        stored = timers_by_id(db)
        fleet.close()
        receiver.stop()
        deliveries = Deliveries(receiver.receipts)
        closed = time.time() - settled

    not_finished = sorted(t for t in expiry if t not in stored or stored[t].status is not Status.FINISHED)
    lost = sorted(t for t in expiry if t not in deliveries.by_id)
    runner_kills = kill_times if "runner" in names else []
    per_kill: Counter[int] = Counter()
    before_kill: list[float] = []
    unexplained: list[str] = []
    for tid, extra in deliveries.duplicates().items():
        first = deliveries.by_id[tid][0]
        near = [k for k, at in enumerate(runner_kills) if at - RECORD_WINDOW <= first <= at + 1.0]
        if near:
            per_kill[near[0]] += extra
            before_kill.append(runner_kills[near[0]] - first)
        else:
            unexplained.append(tid)
    late = deliveries.lateness_ms(expiry)
    return {
        "scenario": f"crash {target}",
        "seed": seed,
        "timers": len(expiry),
        "kills": len(kill_times),
        "kill_at_s": [round(at - started, 2) for at in kill_times],
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "not_finished": len(not_finished),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "duplicates": sum(deliveries.duplicates().values()),
        "duplicated_timers": len(deliveries.duplicates()),
        "max_receipts": max((len(times) for times in deliveries.by_id.values()), default=0),
        "duplicates_per_kill": [per_kill[k] for k in range(len(runner_kills))],
        "unexplained_duplicates": unexplained[:20],
        # How long before its kill the earliest duplicated delivery had been received (ms).
        "duplicate_received_before_kill_ms": round(max(before_kill) * 1000, 1) if before_kill else None,
        "warm_up_s": round(warmed, 2),
        "recovery_s": round(settled - last_kill, 2),
        "stop_s": round(closed, 2),
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late, default=float("nan")),
    }


# -- load ------------------------------------------------------------------------------------------------


def load_scenario(
    env: dict[str, str], workdir: Path, *, timers: int, window: float, runners: int = 3, consumers: int = 2
) -> dict[str, Any]:
    """``runners`` runners and ``consumers`` consumers sharing ``timers`` timers due within ``window`` seconds.

    The timers are created through Kafka (``create --from-file`` with absolute times) after the daemons are
    up, first due once the create should be done. Returns deliveries, duplicates and lateness (receipt -
    expiryTime) percentiles.
    """
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    with cluster(env, workdir) as (fleet, receiver):
        for n in range(consumers):
            fleet.start(f"consumer{n + 1}", "consumer")
        for n in range(runners):
            fleet.start(f"runner{n + 1}", "runner")
        warm_up(env, receiver, db, timeout=60)
        # Kafka creates run at ~3,500/s here: start the window once the whole file should be on the topic.
        first_due = time.time() + 3.0 + timers / 2500
        spec_file = write_specs(
            workdir / "load.jsonl", spread_specs(receiver.url(), f"load-{tag}", timers, first_due, window)
        )
        started = time.time()
        expiry = acknowledged(timerctl(env, "create", "--from-file", str(spec_file), timeout=300))
        created = time.time()
        counts = wait_all_final(db, timers + 1, first_due + window - time.time() + 120, f"{timers} timers to fire")
        exited = {name: proc.poll() for name, proc in fleet.current.items() if proc.poll() is not None}
        fleet.close()
        receiver.stop()
        deliveries = Deliveries([r for r in receiver.receipts if r["timerId"] in expiry])
    late = deliveries.lateness_ms(expiry)
    return {
        "scenario": f"load {runners} runners {consumers} consumers",
        "timers": len(expiry),
        "window_s": window,
        "create_s": round(created - started, 2),
        "create_done_before_first_due_s": round(first_due - created, 2),
        "delivered": len(deliveries.by_id),
        "lost": len(set(expiry) - set(deliveries.by_id)),
        "duplicates": sum(deliveries.duplicates().values()),
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "daemons_exited": exited,
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late, default=float("nan")),
        "min_ms": min(late, default=float("nan")),
    }


# -- the store stalled for longer than the lease -------------------------------------------------------


def store_stall_scenario(
    env: dict[str, str], workdir: Path, *, timers: int, stalls: int, hold: float, lease: float = 2.0
) -> dict[str, Any]:
    """One runner firing ``timers`` timers while another connection holds the SQLite write lock ``hold``
    seconds (longer than the ``lease``), ``stalls`` times: every store call of the runner waits meanwhile,
    so its leases lapse while its deliveries go on. Nothing may be lost and, with no second runner to take
    the lapsed leases, nothing delivered twice.
    """
    env = {**env, "TIMERCTL_LEASE": str(lease)}
    env.pop("TIMERCTL_KAFKA_BOOTSTRAP", None)
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    window = stalls * (hold + 1.5)
    with cluster(env, workdir) as (fleet, receiver):
        fleet.start("runner", "runner")
        first_due = time.time() + 3.0
        spec_file = write_specs(
            workdir / "stall.jsonl", spread_specs(receiver.url(), f"stall-{tag}", timers, first_due, window)
        )
        expiry = acknowledged(timerctl(env, "create", "--from-file", str(spec_file), timeout=60))
        for n in range(stalls):
            # The scenario's schedule: each stall starts half a second into its share of the window.
            time.sleep(max(0.0, first_due + n * (hold + 1.5) + 0.5 - time.time()))
            lock = sqlite3.connect(db, isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                time.sleep(hold)  # the scenario: the store stays locked
                lock.execute("COMMIT")
            finally:
                lock.close()
        counts = wait_all_final(db, timers, 60, f"{timers} timers to fire after the store stalls")
        fleet.close()
        receiver.stop()
        deliveries = Deliveries(receiver.receipts)
    return {
        "scenario": f"store locked {hold:.0f}s x{stalls}, lease {lease:.0f}s",
        "timers": len(expiry),
        "delivered": len(deliveries.by_id),
        "lost": len(set(expiry) - set(deliveries.by_id)),
        "duplicates": sum(deliveries.duplicates().values()),
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "p50_ms": percentile(deliveries.lateness_ms(expiry), 50),
        "p99_ms": percentile(deliveries.lateness_ms(expiry), 99),
        "max_ms": max(deliveries.lateness_ms(expiry), default=float("nan")),
    }

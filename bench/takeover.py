"""Kill and take over: a runner SIGKILLed while it holds claimed timers, and how late another fires them.

    python bench/takeover.py                    # default settings, 200 timers due 3-4 s out
    python bench/takeover.py --count 1000 --rounds 3

Runner A (default settings) claims timers due shortly (within its lookahead) and is SIGKILLed before any
falls due; runner B, started at once with the same defaults, fires them once A's leases lapse. Lateness
= receipt time at the receiver - expiryTime. Duplicates are POSTs received more than once (none are
possible here: A is killed before it starts any POST).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import env_with, percentile, report, start_receiver, stop_receiver, timerctl_bin

from timerctl.model import Status, Timer
from timerctl.stores.sqlite import SqliteStore


def run_once(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="timerctl-takeover-") as tmp:
        db, out = Path(tmp) / "takeover.db", Path(tmp) / "received.jsonl"
        receiver, url = start_receiver(out)
        env = env_with(TIMERCTL_DB=str(db))
        command = [timerctl_bin(), "serve", "runner", "--log-format", "json", "--log-level", "WARNING"]
        store = SqliteStore(str(db))
        log = (Path(tmp) / "runners.log").open("w")
        # Due in 3 s: A (started next) claims them when they come within its 2 s lookahead.
        due = datetime.now(UTC) + timedelta(seconds=3)
        timers = [Timer(f"k{i:05d}", url, due + timedelta(milliseconds=1000 * i / count), due) for i in range(count)]
        store.insert_many(timers)
        first = subprocess.Popen(command, env=env, stderr=log)
        deadline = time.monotonic() + 5
        while store.counts()[Status.RUNNING] < count and time.monotonic() < deadline:
            time.sleep(0.01)
        held = store.counts()[Status.RUNNING]
        first.kill()
        first.wait()
        killed = datetime.now(UTC)
        second = subprocess.Popen(command, env=env, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while store.counts()[Status.FINISHED] < count and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            second.terminate()
            second.wait(timeout=30)
            store.close()
            log.close()
        got = stop_receiver(receiver, out)
    first_seen: dict[str, float] = {}
    for item in got:
        first_seen.setdefault(item["timerId"], item["receivedAt"])
    expiry = {t.timer_id: t.expiry_time.timestamp() for t in timers}
    late = [first_seen[tid] - expiry[tid] for tid in first_seen]
    return {
        "count": count,
        "held_at_kill": held,
        "killed_before_due_s": (due - killed).total_seconds(),
        "delivered": len(first_seen),
        "duplicates": len(got) - len(first_seen),
        "p50_s": percentile(late, 50),
        "max_s": max(late) if late else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rows = [run_once(args.count) for _ in range(args.rounds)]
    columns = ["count", "held_at_kill", "killed_before_due_s", "delivered", "duplicates", "p50_s", "max_s"]
    report("takeover", rows, columns)


if __name__ == "__main__":
    main()

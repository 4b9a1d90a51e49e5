"""Firing lateness: N timers due at a steady rate, a separate runner process, a separate receiver.

    python bench/fire.py --count 10000 --rate 1000
    python bench/fire.py --search            # highest rate with p99 <= 100 ms
    python bench/fire.py --defaults --rate 5000 --count 25000   # as users run it (see below)

Tuned (the default of this script): runner at WARNING, poll interval 0.2 s, the raw-socket receiver.
``--defaults``: the runner with no setting changed (INFO logs, JSON, a line per delivery; poll 0.5 s)
firing at an aiohttp receiver, the way a user's first deployment runs.

Lateness = receipt time at the receiver - expiryTime. Timers are written to a fresh SQLite store
before the runner starts, first due a few seconds out so the runner is warm.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import env_with, percentile, report, start_receiver, stop_receiver, timerctl_bin

from timerctl.model import Timer
from timerctl.stores.sqlite import SqliteStore


def run_once(count: int, rate: float, runners: int = 1, lead: float = 3.0, defaults: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="timerctl-bench-") as tmp:
        db, out = Path(tmp) / "fire.db", Path(tmp) / "received.jsonl"
        receiver, url = start_receiver(out, "aiohttp" if defaults else "raw")
        store = SqliteStore(str(db))
        # Whole milliseconds, the precision the store keeps, so lateness is measured from the stored instant.
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead)
        timers = [
            Timer(f"b{i:07d}", url, start + timedelta(milliseconds=round(1000 * i / rate)), datetime.now(UTC))
            for i in range(count)
        ]
        for i in range(0, count, 5000):
            store.insert_many(timers[i : i + 5000])
        store.close()
        expiry = {t.timer_id: t.expiry_time.timestamp() for t in timers}
        if defaults:
            command = [timerctl_bin(), "serve", "runner", "--log-format", "json"]
            env = env_with(TIMERCTL_DB=str(db))
        else:
            level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
            command = [timerctl_bin(), "serve", "runner", "--log-format", "json", "--log-level", level]
            env = env_with(TIMERCTL_DB=str(db), TIMERCTL_POLL_INTERVAL="0.2", TIMERCTL_LOOKAHEAD="2")
        # The log goes where a service manager would take it: a file, not this terminal.
        log = (Path(tmp) / "runner.log").open("w")
        procs = [subprocess.Popen(command, env=env, stderr=log) for _ in range(runners)]
        window = count / rate
        deadline = time.time() + lead + window + 60
        check = SqliteStore(str(db))
        try:
            while time.time() < deadline:
                counts = check.counts()
                if sum(n for status, n in counts.items() if status.is_final) >= count:
                    break
                time.sleep(0.5)
        finally:
            check.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
            log.close()
        got = stop_receiver(receiver, out)
    first = {}
    for item in got:
        first.setdefault(item["timerId"], item["receivedAt"])
    late = [(first[t] - expiry[t]) * 1000 for t in first]
    span = max(first.values()) - min(first.values()) if first else 0.0
    return {
        "count": count,
        "rate": rate,
        "runners": runners,
        "delivered": len(first),
        "duplicates": len(got) - len(first),
        "p50_ms": percentile(late, 50),
        "p90_ms": percentile(late, 90),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late) if late else float("nan"),
        "achieved_per_s": len(first) / span if span else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--runners", type=int, default=1, help="runner processes sharing the store")
    parser.add_argument("--search", action="store_true", help="raise the rate until p99 > 100 ms")
    parser.add_argument("--defaults", action="store_true", help="default settings (INFO logs) and an aiohttp receiver")
    args = parser.parse_args()
    rows = []
    if args.search:
        for rate in (1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 7000, 8000, 10000):
            row = run_once(max(args.count, int(rate * 5)), rate, args.runners, defaults=args.defaults)
            rows.append(row)
            if row["p99_ms"] > 100 or row["delivered"] < row["count"]:
                break
    else:
        rows.append(run_once(args.count, args.rate, args.runners, defaults=args.defaults))
    columns = [
        "count",
        "rate",
        "runners",
        "delivered",
        "duplicates",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "achieved_per_s",
    ]
    name = ("fire-search" if args.search else f"fire-{int(args.rate)}") + ("-defaults" if args.defaults else "")
    report(name + (f"-x{args.runners}" if args.runners > 1 else ""), rows, columns)


if __name__ == "__main__":
    main()

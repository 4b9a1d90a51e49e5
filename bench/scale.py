"""Scale: 1,000,000 pending timers in the embedded store.

    python bench/scale.py --count 1000000

Reports the insert rate, the runner's RSS while it watches them, the due query (claim with nothing
due), lease renewal (one owner's leases among a million rows), and create/get latency (in-process
service and whole CLI process).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import env_with, report, timerctl_bin

from timerctl.config import load_settings
from timerctl.model import Timer, TimerSpec
from timerctl.service import TimerService
from timerctl.stores.sqlite import SqliteStore


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="timerctl-bench-") as tmp:
        db = str(Path(tmp) / "scale.db")
        store = SqliteStore(db)
        now = datetime.now(UTC)
        started = time.perf_counter()
        batch = 20_000
        for start in range(0, args.count, batch):
            store.insert_many(
                [
                    Timer(f"s{i:08d}", "http://127.0.0.1:9/hook", now + timedelta(hours=1, seconds=i % 86400), now)
                    for i in range(start, min(args.count, start + batch))
                ]
            )
        rows.append(
            {"what": f"insert {args.count:,} (timers/s)", "value": args.count / (time.perf_counter() - started)}
        )
        rows.append({"what": "store file (MB)", "value": Path(db).stat().st_size / 2**20})

        runner = subprocess.Popen(
            [timerctl_bin(), "serve", "runner", "--log-level", "WARNING"], env=env_with(TIMERCTL_DB=db)
        )
        time.sleep(5)  # a few poll ticks over the full table
        rows.append({"what": "runner RSS, 1M pending (MB)", "value": rss_mb(runner.pid)})
        runner.terminate()
        runner.wait(timeout=30)

        later = now + timedelta(minutes=1)
        rows.append(
            {
                "what": "due query: claim_due, none due (ms)",
                "value": timed(lambda: store.claim_due("bench", now, later, later, 500), 50),
            }
        )
        rows.append(
            {
                "what": "lease renewal: renew, owner holding none (ms)",
                "value": timed(lambda: store.renew("bench", later), 50),
            }
        )
        store.claim_due("holder", now, now + timedelta(hours=2), later, 500)
        rows.append(
            {
                "what": "lease renewal: renew, owner holding 500 (ms)",
                "value": timed(lambda: store.renew("holder", later), 50),
            }
        )
        store.close()

        settings = load_settings(env={}, db=db)
        with TimerService(settings) as svc:
            ids: list[str] = []
            rows.append(
                {
                    "what": "create, in-process (median ms)",
                    "value": timed(
                        lambda: ids.append(
                            svc.create(TimerSpec("http://127.0.0.1:9/hook", delay=timedelta(hours=2))).timer.timer_id
                        ),
                        200,
                    ),
                }
            )
            rows.append({"what": "get, in-process (median ms)", "value": timed(lambda: svc.get(ids[-1]), 200)})
        env = env_with(TIMERCTL_DB=db)
        rows.append(
            {
                "what": "timerctl create process (median ms)",
                "value": timed(
                    lambda: subprocess.run(
                        [timerctl_bin(), "create", "--url", "http://127.0.0.1:9/x", "--in", "2h", "--json"],
                        env=env,
                        check=True,
                        stdout=subprocess.DEVNULL,
                    ),
                    10,
                ),
            }
        )
        rows.append(
            {
                "what": "timerctl get process (median ms)",
                "value": timed(
                    lambda: subprocess.run(
                        [timerctl_bin(), "get", ids[0], "--json"], env=env, check=True, stdout=subprocess.DEVNULL
                    ),
                    10,
                ),
            }
        )
    report("scale", rows, ["what", "value"])


if __name__ == "__main__":
    main()

"""Consumer throughput: N creates already in Kafka, one ``timerctl serve consumer`` process persisting them.

    python bench/consume.py --count 100000

Reports timers/s between the first and the last write (the group join is reported separately).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import env_with, report, start_broker, timerctl_bin

from timerctl.model import Timer
from timerctl.queue.kafka import KafkaQueue
from timerctl.stores.sqlite import SqliteStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    broker, bootstrap = start_broker()
    topic = f"bench-consume-{uuid.uuid4().hex[:8]}"
    try:
        now = datetime.now(UTC)
        queue = KafkaQueue(bootstrap, topic)
        produced = time.perf_counter()
        batch = 10_000
        for start in range(0, args.count, batch):
            queue.submit(
                [
                    Timer(f"c{i:08d}", "http://127.0.0.1:9/hook", now + timedelta(hours=1), now)
                    for i in range(start, min(args.count, start + batch))
                ]
            )
        produced = time.perf_counter() - produced
        queue.close()
        with tempfile.TemporaryDirectory(prefix="timerctl-bench-") as tmp:
            db = str(Path(tmp) / "consume.db")
            SqliteStore(db).close()
            check = SqliteStore(db)
            started = time.perf_counter()
            proc = subprocess.Popen(
                [timerctl_bin(), "serve", "consumer", "--log-level", "WARNING"],
                env=env_with(TIMERCTL_DB=db, TIMERCTL_KAFKA_BOOTSTRAP=bootstrap, TIMERCTL_TOPIC=topic),
            )
            first = last = None
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline:
                stored = sum(check.counts().values())
                if stored and first is None:
                    first = (time.perf_counter(), stored)
                if stored >= args.count:
                    last = time.perf_counter()
                    break
                time.sleep(0.02)
            proc.terminate()
            proc.wait(timeout=30)
            check.close()
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
    if first is None or last is None:
        raise SystemExit("the consumer did not store every timer within 10 minutes")
    rows = [
        {"what": f"produce {args.count:,} via KafkaQueue (timers/s)", "value": args.count / produced},
        {"what": "consumer start to first write (s)", "value": first[0] - started},
        {"what": "consumer persist rate (timers/s)", "value": (args.count - first[1]) / max(1e-9, last - first[0])},
        {"what": "consumer start to all stored (s)", "value": last - started},
    ]
    report("consume", rows, ["what", "value"])


if __name__ == "__main__":
    main()

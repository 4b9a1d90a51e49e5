"""Hostile receivers: runner memory next to a 1 GiB answer, healthy lateness next to ten hosts that hang.

    python bench/hostile.py                        # both scenarios
    python bench/hostile.py --only huge --hostile 1
    python bench/hostile.py --only hanging --rate 200 --seconds 5

- huge: healthy timers at --rate for --seconds to bench/receiver.py, and --hostile timers spread over the
  same window to a receiver answering 200 with Content-Length: 1073741824 and streaming junk (then the
  same with a chunked body that never ends). Peak RSS is VmHWM of the ``timerctl serve runner`` process.
- hanging: ten hosts (127.0.0.2 ... 127.0.0.11) that accept connections and never answer, 32 timers
  each due 200 ms before the healthy timers start (320 hanging requests, more than the 256 overall slots).

Lateness = receipt time at the healthy receiver - expiryTime. The hostile servers are threads of this
process (``tests/hostile_servers.py``); the runner and the healthy receiver are processes of their own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import env_with, percentile, report, start_receiver, stop_receiver, timerctl_bin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile_servers import GIB, RawServer, huge_body, vm_hwm_mb
from timerctl.model import Status, Timer
from timerctl.stores.sqlite import SqliteStore

COLUMNS = [
    "scenario",
    "healthy",
    "delivered",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "hostile",
    "hostile_finished",
    "start_rss_mb",
    "peak_rss_mb",
    "hanging_conns",
    "max_sent_mb",
]


def timers_at(prefix: str, url: str, start: datetime, count: int, rate: float) -> list[Timer]:
    return [
        Timer(f"{prefix}{i:06d}", url, start + timedelta(milliseconds=round(1000 * i / rate)), datetime.now(UTC))
        for i in range(count)
    ]


def start_runner(db: Path, **settings: str) -> subprocess.Popen[bytes]:
    """A ``timerctl serve runner`` on ``db``, logging warnings only (as bench/fire.py's runners do)."""
    env = env_with(TIMERCTL_DB=str(db), TIMERCTL_POLL_INTERVAL="0.2", TIMERCTL_LOOKAHEAD="2", **settings)
    return subprocess.Popen(
        [timerctl_bin(), "serve", "runner", "--log-format", "json", "--log-level", "WARNING"], env=env
    )


def progress(store: SqliteStore, hostile: list[Timer]) -> tuple[int, int]:
    """Healthy timers in a final state, and ``hostile`` timers with an attempt recorded."""
    final = sum(n for status, n in store.counts().items() if status.is_final)
    stored = [t for t in (store.get(timer.timer_id) for timer in hostile) if t is not None]
    return final - sum(1 for t in stored if t.status.is_final), sum(1 for t in stored if t.attempts)


def run_scenario(name: str, rate: float, seconds: float, hostile: int, lead: float = 4.0) -> dict[str, Any]:
    healthy_count = int(rate * seconds)
    with tempfile.TemporaryDirectory(prefix="timerctl-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        db, out = tmp / "hostile.db", tmp / "received.jsonl"
        receiver, url = start_receiver(out)
        servers: list[RawServer] = []
        if name == "hanging":
            servers = [RawServer(host=f"127.0.0.{i}") for i in range(2, 12)]
        else:
            servers = [RawServer(huge_body(chunked=name == "chunked", cap=GIB), host="127.0.0.2")]
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead)
        healthy = timers_at("ok", url, start, healthy_count, rate)
        if name == "hanging":
            early = start - timedelta(milliseconds=200)
            bad = [
                Timer(f"hang{h}-{i:02d}", s.url(), early, datetime.now(UTC))
                for h, s in enumerate(servers)
                for i in range(32)
            ]
        else:
            bad = timers_at("huge", servers[0].url(), start, hostile, hostile / seconds)
        store = SqliteStore(str(db))
        store.insert_many(healthy + bad)
        proc = start_runner(
            db,
            TIMERCTL_REQUEST_TIMEOUT="60" if name == "hanging" else "10",
            TIMERCTL_RETRY_FIRST_DELAY="60",
            TIMERCTL_RETRY_MAX_DELAY="60",
            TIMERCTL_DRAIN_TIMEOUT="1",  # the hanging requests are still in flight at the end
        )
        # Just before the first timer falls due: started, timers claimed, nothing delivered yet.
        time.sleep(max(0.0, start.timestamp() - time.time() - 0.3))
        start_rss = vm_hwm_mb(proc.pid)
        deadline = time.time() + lead + seconds + 30
        try:
            while time.time() < deadline:
                healthy_done, hostile_tried = progress(store, bad if name != "hanging" else [])
                if healthy_done >= len(healthy) and hostile_tried >= (0 if name == "hanging" else len(bad)):
                    break
                time.sleep(0.5)
            peak = vm_hwm_mb(proc.pid)
            finished = sum(1 for t in bad if (stored := store.get(t.timer_id)) and stored.status is Status.FINISHED)
        finally:
            store.close()
            proc.terminate()
            proc.wait(timeout=60)
            for server in servers:
                server.close()
        got = stop_receiver(receiver, out)
    due = {t.timer_id: t.expiry_time.timestamp() for t in healthy}
    first: dict[str, float] = {}
    for item in got:
        first.setdefault(item["timerId"], item["receivedAt"])
    late = [(first[t] - due[t]) * 1000 for t in first if t in due]
    return {
        "scenario": name,
        "healthy": healthy_count,
        "delivered": len(late),
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late) if late else float("nan"),
        "hostile": len(bad),
        "hostile_finished": finished,
        "start_rss_mb": start_rss,
        "peak_rss_mb": peak,
        "hanging_conns": sum(len(s.accepted) for s in servers) if name == "hanging" else None,
        # Body bytes a hostile server got out before the runner closed: socket buffers, if it read none.
        "max_sent_mb": max(servers[0].sent, default=0) / 2**20 if name != "hanging" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="huge,chunked,hanging", help="comma-separated: huge, chunked, hanging")
    parser.add_argument("--rate", type=float, default=200.0, help="healthy timers per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long healthy timers keep falling due")
    parser.add_argument("--hostile", type=int, default=5, help="timers to the 1 GiB receiver (huge, chunked)")
    args = parser.parse_args()
    rows = [run_scenario(name, args.rate, args.seconds, args.hostile) for name in args.only.split(",")]
    report("hostile", rows, COLUMNS)


if __name__ == "__main__":
    main()

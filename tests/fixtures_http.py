"""Webhook receivers: a real local HTTP receiver that records every webhook it gets (no patched clients),
hostile servers (``tests/hostile_servers.py``) that misbehave below HTTP, and a resolver to inject."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.hostile_servers import RawServer
from tests.polling import wait_for
from timerctl.model import Timer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.time() when the body was read

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """One scripted answer: its status, its body, and how long to wait before sending it."""

    status: int = 200
    body: bytes = b""
    delay: float = 0.0


class Receiver:
    """Records POSTs; per path a queue of replies (default 200, no body) and an optional hang."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._cond = threading.Condition()
        self._responses: dict[str, deque[Reply]] = defaultdict(deque)
        self._hang: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?")[0]
                hang = receiver._hang.get(path)
                if hang:
                    time.sleep(hang)
                item = Received(path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                with receiver._cond:
                    receiver.requests.append(item)
                    queue = receiver._responses[path]
                    reply = queue.popleft() if queue else Reply()
                    receiver._cond.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        # A burst of new connections (many timers due at once) must not overflow the accept queue.
        ThreadingHTTPServer.request_queue_size = 128
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def respond(self, path: str, *replies: int | Reply) -> None:
        """Answer the next POSTs to ``path`` with these statuses or replies, then 200."""
        self._responses[path].extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def hang(self, path: str, seconds: float) -> None:
        """Make every POST to ``path`` wait ``seconds`` before answering."""
        self._hang[path] = seconds

    def wait_for(self, count: int, timeout: float = 10.0, path: str | None = None) -> list[Received]:
        """Block until at least ``count`` requests (to ``path``, if given) arrived; fail the test otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} webhook(s), got {len(got)} within {timeout}s")
                self._cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., RawServer]]:
    """Start hostile servers (``RawServer(respond, host)``; without ``respond`` one that never answers); all are
    closed at the end of the test."""
    started: list[RawServer] = []

    def start(*args: object, **kwargs: object) -> RawServer:
        server = RawServer(*args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def roomy(receiver: Receiver) -> None:
    """Give the receiver a listen backlog fit for bursts of new connections.

    The fixture keeps socketserver's backlog of 5: a burst of connects overflows it, the kernel drops SYNs
    and each dropped connect waits a 1 s retransmit (or times out and is retried), which reads as lateness.
    """
    receiver.server.socket.listen(512)


def lateness(got: list[Received], timers: list[Timer]) -> list[float]:
    """Seconds from each timer's expiry to its first receipt, sorted."""
    due = {t.timer_id: t.expiry_time.timestamp() for t in timers}
    first: dict[str, float] = {}
    for item in got:
        first.setdefault(item.json["timerId"], item.received_at)
    return sorted(first[tid] - due[tid] for tid in first)


class FakeDns:
    """An injected resolver: names to addresses; anything else does not resolve."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.names[host]


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` after ``timeout``."""
    return wait_for(predicate, timeout, message, interval)

"""A real local HTTP receiver that records every webhook it gets (no patched clients)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.polling import wait_for


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.time() when the body was read

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records POSTs; per path a queue of statuses to answer (default 200) and an optional hang."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._cond = threading.Condition()
        self._responses: dict[str, deque[int]] = defaultdict(deque)
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
                    status = queue.popleft() if queue else 200
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

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

    def respond(self, path: str, *statuses: int) -> None:
        """Answer the next POSTs to ``path`` with these statuses, then 200."""
        self._responses[path].extend(statuses)

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


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` after ``timeout``."""
    return wait_for(predicate, timeout, message, interval)

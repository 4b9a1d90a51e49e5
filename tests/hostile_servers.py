"""Hostile webhook receivers: real sockets on loopback that misbehave below the HTTP library.

Free of pytest on purpose: ``bench/hostile.py`` imports it. Each server listens on its own address of
127.0.0.0/8 (all of it is loopback on Linux), so ten of them are ten hosts to the runner.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

#: What a hostile response writer gets: the connection and the request head; returns body bytes sent.
Respond = Callable[[socket.socket, bytes], int]
#: One block of junk body, sent again and again.
JUNK = b"x" * (64 * 1024)
#: A Content-Length no runner should try to hold in memory: 1 GiB.
GIB = 1 << 30


class RawServer:
    """Accepts connections on ``host``; ``respond`` answers each request, or, without it, nothing ever does.

    ``accepted`` holds the time.time() of each accepted connection, ``sent`` the body bytes each response
    wrote before the client went away or the writer stopped.
    """

    def __init__(self, respond: Respond | None = None, host: str = "127.0.0.1") -> None:
        self.respond = respond
        self.host = host
        self.sock = socket.create_server((host, 0), backlog=512)
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[float] = []
        self.sent: list[int] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"hostile-{host}", daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(time.time())
            self._held.append(conn)
            if self.respond is not None:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        assert self.respond is not None
        try:
            head = _read_request(conn)
            self.sent.append(self.respond(conn, head))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes:
    """The request's head, after reading its body (by Content-Length) off the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the request head ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


def huge_body(chunked: bool = False, cap: int = GIB) -> Respond:
    """200 OK announcing 1 GiB (or chunked, never ending), then junk until ``cap`` bytes or the client leaves."""

    def respond(conn: socket.socket, head: bytes) -> int:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % GIB
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + framing + b"\r\n\r\n")
        block = b"%x\r\n%s\r\n" % (len(JUNK), JUNK) if chunked else JUNK
        sent = 0
        try:
            while sent < cap:
                conn.sendall(block)
                sent += len(JUNK)
        except OSError:
            pass  # the client closed the connection: what a bounded reader does
        return sent

    return respond


def echoed_status_line(conn: socket.socket, head: bytes) -> int:
    """The request line sent back as the status line: invalid, and carrying the request's query string."""
    conn.sendall(head.split(b"\r\n", 1)[0] + b"\r\n\r\n")
    return 0


def oversized_headers(conn: socket.socket, head: bytes) -> int:
    """A header of 100 KB (aiohttp's limit is 8 KB) that starts with the request line, query string and all."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Echo: " + head.split(b"\r\n", 1)[0] + b"a" * 100_000 + b"\r\n\r\n")
    return 0


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of process ``pid`` so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")

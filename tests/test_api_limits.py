"""The HTTP API's bounds (``api_limits.py``) on a real server, under hostile and concurrent clients.

A ``timerctl serve api`` subprocess (with a tokens file and Prometheus metrics) takes oversized bodies, a
thousand stalled connections and fifty racing creates; raw sockets put exactly the bytes each case needs on
the wire. The app in an in-thread uvicorn with short limits shows each timeout firing, and not firing
where it must not.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.factories import api_token, process_env, settings_for, token_line
from tests.fixtures_api import HOOK, OLD_BODY
from tests.polling import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
HALF_OPEN = 1000
#: The API's documented time for a request head (``Limits.head_timeout``).
HEAD_TIMEOUT = 10.0


@dataclass
class Api:
    port: int
    metrics_port: int
    token: str
    proc: subprocess.Popen[bytes]

    @property
    def auth(self) -> bytes:
        return f"Authorization: Bearer {self.token}\r\n".encode()

    def client(self, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=headers, timeout=10, **kw)

    def created_total(self) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        [line] = [line for line in text.splitlines() if line.startswith("timerctl_timers_created_total ")]
        return float(line.split()[1])


def raise_open_file_limit(need: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``need`` (children inherit it); skip if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    raise_open_file_limit(2 * HALF_OPEN + 500)  # before the server starts: it inherits the limit
    tmp = tmp_path_factory.mktemp("api")
    token = api_token()
    (tmp / "tokens").write_text(token_line(token, "write") + " tests\n")
    env = process_env(tmp, api_tokens_file=str(tmp / "tokens"))
    env["PYTHONPATH"] = str(ROOT)  # the timerctl of this tree, whichever is installed
    port, metrics_port = free_port(), free_port()
    argv = ["serve", "api", "--port", str(port), "--metrics-port", str(metrics_port), "--log-level", "ERROR"]
    with (tmp / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "timerctl", *argv, "--log-format", "json"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = Api(port, metrics_port, token, proc)

    def answers() -> bool:
        assert proc.poll() is None, (tmp / "api.log").read_text()
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        return False

    wait_for(answers, 30, "the API to answer /health")
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from ``sock``: status, lower-cased headers and the Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` seconds (what it sends first is discarded)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# --- body limits on the real server ------------------------------------------------------------------------


def test_a_declared_body_over_1_mib_is_413_before_a_byte_of_it_is_sent(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        head = f"POST /v1/timer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {2 * MiB}\r\n"
        sock.sendall(head.encode() + api.auth + b"Expect: 100-continue\r\n\r\n")
        status, headers, body = read_response(sock)  # no "100 Continue": the client need not send the body
        assert (status, headers["connection"]) == (413, "close")
        assert json.loads(body) == {"code": 413, "message": "request body of 2097152 bytes is over the limit of 1 MiB"}
        assert closed_by_peer(sock, 5)


def test_a_chunked_body_is_cut_off_one_byte_past_1_mib_with_413(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/timer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + api.auth + b"\r\n")
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
        sock.sendall(chunk * 16 + b"1\r\n \r\n")  # 1 MiB + 1 byte, and no end: a server without a limit waits
        status, headers, body = read_response(sock)
        assert (status, headers["connection"]) == (413, "close")
        assert json.loads(body) == {"code": 413, "message": "request body is over the limit of 1 MiB"}
        assert closed_by_peer(sock, 5)


def test_a_body_of_exactly_1_mib_is_read_and_judged_on_its_content(api: Api) -> None:
    body = json.dumps({**OLD_BODY, "payload": "x"}).encode()
    body += b" " * (MiB - len(body))  # trailing whitespace is valid JSON
    with api.client() as client:
        response = client.post("/v1/timer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text


# --- a thousand stalled connections --------------------------------------------------------------------------


def test_a_thousand_half_open_connections_neither_lock_out_clients_nor_stay_open(api: Api) -> None:
    partials = [b"", b"GET /v1/ti", b"GET /v1/timer/x HTTP/1.1\r\nHost: x\r\nAuthoriz"]
    stalled: list[socket.socket] = []
    try:
        for n in range(HALF_OPEN):
            sock = socket.create_connection(("127.0.0.1", api.port), timeout=5)
            stalled.append(sock)
            sock.sendall(partials[n % len(partials)])
        opened = time.monotonic()
        # Fresh connections each time: a new client must be accepted and answered, not only a kept-alive one.
        with api.client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for n in range(20):
                started = time.monotonic()
                status = client.get(f"/v1/timer/nope-{n}").status_code if n % 2 else client.get("/health").status_code
                assert (status, time.monotonic() - started < 2.0) == (404 if n % 2 else 200, True)
        # Then every stalled connection is closed by the server, at the head timeout.
        selector = selectors.DefaultSelector()
        for sock in stalled:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_left = len(stalled)
        deadline = opened + HEAD_TIMEOUT + 8
        while open_left and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(BlockingIOError, ConnectionResetError):
                    if sock.recv(4096):
                        continue
                selector.unregister(sock)
                open_left -= 1
        selector.close()
        assert open_left == 0, f"{open_left} of {HALF_OPEN} stalled connections still open after {HEAD_TIMEOUT + 8} s"
    finally:
        for sock in stalled:
            sock.close()


# --- racing creates -------------------------------------------------------------------------------------


def race(api: Api, body: dict[str, Any], clients: int) -> list[tuple[int, dict[str, Any]]]:
    """``clients`` connections, opened first, each sending the same create at the same moment."""
    payload = json.dumps(body).encode()
    request = b"POST /v1/timer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + api.auth
    request += b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    start = threading.Barrier(clients)
    answers: list[tuple[int, dict[str, Any]]] = []

    def create(sock: socket.socket) -> None:
        start.wait()
        sock.sendall(request)
        status, _, reply = read_response(sock)
        answers.append((status, json.loads(reply)))

    socks = [socket.create_connection(("127.0.0.1", api.port), timeout=10) for _ in range(clients)]
    threads = [threading.Thread(target=create, args=(sock,)) for sock in socks]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for sock in socks:
            sock.close()
    return answers


def test_fifty_concurrent_creates_of_one_timer_id_answer_one_201_and_count_one(api: Api) -> None:
    before = api.created_total()
    rounds = 10
    for round_ in range(rounds):
        answers = race(api, {**OLD_BODY, "timerId": f"race-{round_}"}, 50)
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200] * 49 + [201], f"round {round_}: {statuses.count(201)} x 201"
        assert {reply["timer"]["timerId"] for _, reply in answers} == {f"race-{round_}"}
    assert api.created_total() - before == rounds


# --- each timeout in an in-thread server with short limits ---------------------------------------------------


@contextlib.contextmanager
def serving(tmp_path: Path, **limits: Any) -> Iterator[int]:
    """The app on a uvicorn in a thread with ``Limits(**limits)``; yields its port."""
    from timerctl.api import create_app
    from timerctl.api_limits import Limits, uvicorn_options

    chosen = Limits(**limits)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings_for(tmp_path), limits=chosen), host="127.0.0.1", port=port, log_config=None,
        **uvicorn_options(chosen),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn")
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert server.started
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_connection_that_sends_no_complete_head_is_closed_at_the_head_timeout(tmp_path: Path) -> None:
    with serving(tmp_path, head_timeout=0.5, keep_alive=5) as port:
        connect = lambda: socket.create_connection(("127.0.0.1", port), timeout=5)  # noqa: E731
        with connect() as silent, connect() as half_line, connect() as half_head, connect() as prompt:
            half_line.sendall(b"GET /health HT")
            half_head.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            prompt.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(prompt)[0] == 200
            started = time.monotonic()
            for sock in (silent, half_line, half_head):
                assert closed_by_peer(sock, 5)
            assert time.monotonic() - started < 2
            # Kept alive past the head timeout, a connection idle between requests is not cut: the
            # keep-alive time governs there. (A real wait: the test is that nothing happens meanwhile.)
            time.sleep(1)
            prompt.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(prompt)[0] == 200
            prompt.sendall(b"GET /health HTTP/1.1\r\n")  # a later request's head is timed from its first byte
            started = time.monotonic()
            assert closed_by_peer(prompt, 5) and time.monotonic() - started < 2


def test_a_body_not_sent_in_time_is_408_and_the_connection_closes(tmp_path: Path) -> None:
    with serving(tmp_path, body_timeout=0.5) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/timer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"seconds": 5,')
        status, headers, body = read_response(sock)
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body) == {"code": 408, "message": "request body not received within 0.5 s of the first read"}
        assert closed_by_peer(sock, 5)


def test_a_small_body_limit_applies_to_json_too(tmp_path: Path) -> None:
    body = json.dumps({**OLD_BODY, "payload": "x" * 1000}).encode()
    with serving(tmp_path, max_body=1000) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        response = client.post("/v1/timer", content=body, headers={"content-type": "application/json"})
        assert (response.status_code, response.json()["message"]) == (
            413,
            f"request body of {len(body)} bytes is over the limit of 1000 bytes",
        )
        assert client.post("/v1/timer", json={"webhookUrl": HOOK, "seconds": 5}).status_code == 201


def test_an_idle_kept_alive_connection_closes_after_the_keep_alive_time(tmp_path: Path) -> None:
    with (
        serving(tmp_path, keep_alive=1, head_timeout=30) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert closed_by_peer(sock, 5) and 0.5 < time.monotonic() - started < 3


def test_past_the_connection_limit_requests_get_503_until_a_connection_leaves(tmp_path: Path) -> None:
    with serving(tmp_path, max_connections=3) as port:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                assert client.get("/health").status_code == 503
                held.pop().close()
                wait_for(lambda: client.get("/health").status_code == 200, 10, "a freed connection slot")
        finally:
            for sock in held:
                sock.close()


def test_an_unfinished_request_head_over_16_kib_is_400_and_closes(api: Api) -> None:
    """What a stalled connection can make the server hold: h11 refuses to buffer more of a head than this."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17 * 1024)
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"]) == (400, "close")
        assert closed_by_peer(sock, 5)

"""Bounds on what one HTTP client can hold: body size and time, request-head time, connections.

uvicorn bounds how much of an unfinished request head it holds (``h11_max_incomplete_event_size``)
and the idle time between two requests (``timeout_keep_alive``, armed only once a response is sent),
but it has no timer on *reading* a request: a client that connects and sends nothing, or half a request
line, keeps its connection, and its place under ``limit_concurrency``, for ever. A thousand such
connections would lock every real client out. ``HeadDeadlineProtocol`` adds that timer to uvicorn's
h11 protocol; ``BodyLimit`` (pure ASGI) bounds the body's size and time.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of the server one request or connection may use."""

    #: Largest request body: a create is a 2 KiB URL and a payload of 64 KiB compact (more if pretty-printed).
    max_body: int = MiB
    #: Seconds a request's body may take to arrive once the app reads it (1 MiB at 35 KB/s).
    body_timeout: float = 30.0
    #: Seconds from a request's first byte (or the connection's start) to its last header.
    head_timeout: float = 10.0
    #: Bytes of an unfinished request line and headers held while waiting for the rest (h11's default, stated).
    max_head: int = 16 * 1024
    #: Seconds an idle keep-alive connection stays open after a response (uvicorn's default, stated).
    keep_alive: int = 5
    #: Connections held at once; above it uvicorn answers 503 (stalled ones leave after ``head_timeout``).
    max_connections: int = 2048
    #: Connections the kernel queues before they are accepted (capped by net.core.somaxconn).
    backlog: int = 2048


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that enforce ``limits`` at the connection level."""

    class Protocol(HeadDeadlineProtocol):
        head_timeout = limits.head_timeout

    return {
        "http": Protocol,
        "h11_max_incomplete_event_size": limits.max_head,
        "timeout_keep_alive": limits.keep_alive,
        "limit_concurrency": limits.max_connections,
        "backlog": limits.backlog,
    }


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose client is too slow to send a request.

    The deadline runs from the connection's start, and from the first byte of each later request, until
    that request's headers are complete; and from a response sent before its request's body was read
    until that body is drained. While the app holds the request it does not run: ``BodyLimit`` times the
    body the app reads, and ``timeout_keep_alive`` bounds the idle time between requests.
    """

    head_timeout: ClassVar[float] = Limits().head_timeout
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _watch(self) -> None:
        theirs = self.conn.their_state
        partial_head = theirs is h11.IDLE and bool(self.conn.trailing_data[0])
        draining = theirs is h11.SEND_BODY and self.conn.our_state in (h11.DONE, h11.MUST_CLOSE)
        if partial_head or draining:
            self._arm()
        else:
            self._disarm()

    def _arm(self) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.head_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection that sent no complete request within %g s", self.head_timeout)
            self.transport.close()


class BodyTooSlowOrLarge(HTTPException):
    """A request body over the size limit (413) or not received in time (408); the connection closes after."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail, headers={"connection": "close"})


class BodyLimit:
    """ASGI middleware: a body over ``max_body`` bytes is a 413, one not received in ``body_timeout`` a 408.

    A ``Content-Length`` over the limit is answered before a byte of the body is read (with
    ``Expect: 100-continue`` the client never sends it); a chunked body is counted as it streams in. A
    response sent before the body was read closes the connection, rather than leaving uvicorn to drain
    whatever the client still sends.
    """

    def __init__(self, app: ASGIApp, limits: Limits = Limits()) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").strip()
        length = int(declared) if declared.isdigit() else None  # h11 already refused a malformed one
        if length is not None and length > self.limits.max_body:
            await _answer(send, 413, f"request body of {length} bytes is over the limit of {_size(self.limits)}")
            return
        body = _Body(receive, self.limits, expected=bool(length) or b"transfer-encoding" in headers)

        async def send_closing_if_unread(message: Message) -> None:
            if message["type"] == "http.response.start":
                body.responded = True
                if body.expected and not body.complete:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, body.receive, send_closing_if_unread)
        except BodyTooSlowOrLarge as exc:  # only when no exception handler inside answered it
            if body.responded:
                raise
            await _answer(send, exc.status_code, exc.detail)


def _size(limits: Limits) -> str:
    return f"{limits.max_body // MiB} MiB" if limits.max_body % MiB == 0 else f"{limits.max_body} bytes"


class _Body:
    """One request's body as the app reads it: counted, and timed from the app's first read."""

    def __init__(self, receive: Receive, limits: Limits, expected: bool) -> None:
        self._receive = receive
        self.limits = limits
        self.expected = expected
        self.received = 0
        self.complete = False
        self.responded = False
        self._deadline: float | None = None

    async def receive(self) -> Message:
        if self.complete:  # a later read waits for the disconnect, which may take as long as the response
            return await self._receive()
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self.limits.body_timeout
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise BodyTooSlowOrLarge(
                408, f"request body not received within {self.limits.body_timeout:g} s of the first read"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body:
                raise BodyTooSlowOrLarge(413, f"request body is over the limit of {_size(self.limits)}")
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True  # http.disconnect: nothing more will come
        return message


async def _answer(send: Send, code: int, message: str) -> None:
    """A ``{code, message}`` error sent straight from the middleware, closing the connection after."""
    body = json.dumps({"code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

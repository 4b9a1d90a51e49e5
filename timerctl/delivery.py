"""The webhook POST: body and headers, signing, timeouts, per-host isolation and the retry decision.

Delivery failures are returned as data (``Attempt``), never raised: the runner turns each into a
Finished, retry or Failed outcome. Redirects are not followed: a 3xx is a failed attempt, so a target
can never bounce the runner to an address the target checks would have refused. Receivers are not
trusted: a response is read for its status and at most ``BODY_PREFIX`` bytes of body, every request
has a time limit, a host that stops answering gets fewer slots (``HostSlots``), and error texts lose
the URL's query string and credentials before they are stored or logged.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from timerctl import __version__
from timerctl.attempts import RESPONSE_KEPT, Delivery, Outcome, RetryPolicy
from timerctl.model import InvalidInput, Status, Timer, format_instant
from timerctl.redaction import one_line, scrub
from timerctl.slots import HostSlots
from timerctl.targets import RefusedTarget, TargetChecker

log = logging.getLogger(__name__)

#: Bytes of a response body kept on the ``Attempt``; the rest is never read (a receiver may send gigabytes).
BODY_PREFIX = 512
#: Bytes of body beyond the prefix discarded when already received, so the connection can be reused.
DISCARD_BUFFERED = 64 * 1024


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one POST: ``ok`` for a 2xx; ``retryable`` False for a refusal never worth retrying.

    ``body_prefix`` holds at most the first ``BODY_PREFIX`` bytes of the response body.
    """

    ok: bool
    status_code: int | None = None
    error: str | None = None
    retryable: bool = True
    duration: float = 0.0
    body_prefix: bytes = b""


_encode_str = json.encoder.encode_basestring  # the C encoder, non-ASCII kept
_encode_payload = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def build_body(timer: Timer, attempt: int, fired_at: datetime) -> bytes:
    """The JSON body every receiver gets: ``{"timerId","expiryTime","firedAt","attempt","payload"}``.

    Assembled from encoded parts (byte-identical to ``json.dumps`` of the dict, compact, non-ASCII
    kept) because a dict encode cost more than anything else the firing thread does besides the POST.
    """
    return (
        f'{{"timerId":{_encode_str(timer.timer_id)},"expiryTime":"{format_instant(timer.expiry_time)}",'
        f'"firedAt":"{format_instant(fired_at)}","attempt":{attempt},"payload":{_encode_payload(timer.payload)}}}'
    ).encode()


def build_headers(timer: Timer, body: bytes, fired_at: datetime, signer: Signer | None) -> dict[str, str]:
    """Headers of a delivery: content type, agent, idempotency key and the Standard Webhooks trio."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"timerctl/{__version__}",
        "Idempotency-Key": timer.timer_id,
        "webhook-id": timer.timer_id,
        "webhook-timestamp": str(int(fired_at.timestamp())),
    }
    if signer is not None:
        headers["webhook-signature"] = signer.sign(timer.timer_id, fired_at, body)
    return headers


def check_secret(secret: str) -> str:
    """``secret`` unchanged when it is ``whsec_`` + strict base64 of a non-empty key; InvalidInput otherwise.

    The signing library silently drops non-base64 characters, which would sign with a different key.
    """
    import base64
    import binascii

    key = secret.removeprefix("whsec_")
    try:
        decoded = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"signing secret is not whsec_<base64>: {exc}") from None
    if not decoded:
        raise InvalidInput("signing secret is empty; expected whsec_<base64 of 24-64 random bytes>")
    return secret


class Signer:
    """Standard Webhooks signatures (``v1,<base64 HMAC-SHA256>``), one per secret during rotation."""

    def __init__(self, secrets: list[str]) -> None:
        from standardwebhooks.webhooks import Webhook

        self._hooks = [Webhook(check_secret(s)) for s in secrets if s]
        if not self._hooks:
            raise ValueError("a Signer needs at least one secret")

    def sign(self, msg_id: str, at: datetime, body: bytes) -> str:
        text = body.decode()
        return " ".join(hook.sign(msg_id, at, text) for hook in self._hooks)


def decide(
    timer: Timer,
    attempt: int,
    result: Attempt,
    now: datetime,
    policy: RetryPolicy,
    rand: float,
    fired_at: datetime | None = None,
) -> Outcome:
    """The outcome to record after attempt number ``attempt`` of ``timer`` produced ``result``.

    A delivered timer records ``fired_at`` (when the POST was sent), else ``now``. Every outcome carries
    the attempt as a ``Delivery`` for the timer's history.
    """
    started = fired_at or now
    delivery = Delivery(
        attempt,
        started,
        round(result.duration * 1000),
        result.status_code,
        None if result.ok else result.error or f"HTTP {result.status_code}",
        response_text(result.body_prefix, timer.webhook_url) if result.body_prefix else None,
    )
    count = timer.delivery_count + 1
    if result.ok:
        return Outcome(
            timer.timer_id,
            Status.FINISHED,
            attempt,
            fired_at=started,
            ended_at=now,
            delivery=delivery,
            delivery_count=count,
        )
    error = delivery.error
    delay = policy.next_delay(attempt, rand) if result.retryable else None
    if delay is None:
        return Outcome(
            timer.timer_id,
            Status.FAILED,
            attempt,
            last_error=error,
            ended_at=now,
            delivery=delivery,
            on_failure_url=timer.on_failure_url,
            delivery_count=count,
        )
    return Outcome(
        timer.timer_id,
        Status.RETRYING,
        attempt,
        last_error=error,
        due_at=now + delay,
        delivery=delivery,
        delivery_count=count,
    )


def response_text(prefix: bytes, url: str) -> str:
    """The start of a response body as kept in the history: text, at most ``RESPONSE_KEPT`` characters,
    with the webhook URL's secrets and any URL's credentials removed (a receiver may echo the request)."""
    text = prefix[: RESPONSE_KEPT * 4].decode("utf-8", errors="replace")[:RESPONSE_KEPT]
    return _hide(scrub(text), url)


class Route(NamedTuple):
    """What a delivery needs from its URL, parsed once per URL (``_route``)."""

    host: str
    host_header: str
    server_name: str | None  # the TLS server name when pinned to an address: https only


@functools.lru_cache(maxsize=4096)
def _route(url: str) -> Route:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return Route(host, parts.netloc.rpartition("@")[2], host if parts.scheme == "https" else None)


@functools.lru_cache(maxsize=4096)
def _pinned(url: str, address: str) -> str:
    """The URL with its host replaced by the checked ``address`` (the Host header keeps the name)."""
    parts = urlsplit(url)
    ip_host = f"[{address}]" if ":" in address else address
    netloc = ip_host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


@functools.lru_cache(maxsize=4096)
def _secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that may hold a secret, as text: query string, fragment and user info.

    Parts shorter than 4 characters are left out: too short to be a secret, and replacing them would
    garble the rest of the text (``?1`` would take every "1" out of an error message).
    """
    parts = urlsplit(url)
    return tuple(part for part in (parts.query, parts.fragment, parts.netloc.rpartition("@")[0]) if len(part) >= 4)


def _hide(text: str, url: str) -> str:
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def error_text(error: BaseException | str, url: str) -> str:
    """``error`` as one line for ``lastError`` and logs, without ``url``'s query string or credentials.

    aiohttp puts the whole URL (``?token=…`` included) in its exception texts: ``one_line`` redacts every
    URL in the text, and the webhook's own secrets are removed wherever else they show (a receiver may echo
    the request line back as its status line). Hidden before the line is cut, so no partial secret is left.
    """
    return one_line(_hide(one_line(error, limit=1 << 20), url))


def log_unexpected(exc: BaseException, timer: Timer) -> str:
    """Log a delivery failure nothing anticipated, with its traceback (secrets hidden); returns ``lastError``."""
    line = error_text(exc, timer.webhook_url)
    trace = _hide(scrub("".join(traceback.format_exception(exc))), timer.webhook_url)
    log.error(
        "unexpected error delivering timer %s: %s\n%s",
        timer.timer_id,
        line,
        trace,
        extra={"timer_id": timer.timer_id, "event": "delivery_error"},
    )
    return line


async def _read_prefix(response: aiohttp.ClientResponse) -> bytes:
    """The first ``BODY_PREFIX`` bytes of the body; a longer body is never read: its connection is closed.

    The status is known already and decides the attempt, so a body that stalls or breaks off only ends the
    prefix early. Whatever already arrived past the prefix (up to ``DISCARD_BUFFERED``) is discarded without
    waiting, so a receiver answering a few KB keeps its keep-alive connection; waiting for or buffering more
    would let a receiver choose how much memory and time the runner spends (a 1 GiB body took 2 GB of RSS).
    """
    content = response.content
    prefix = b""
    try:
        while len(prefix) < BODY_PREFIX and not content.at_eof():
            chunk = await content.read(BODY_PREFIX - len(prefix))
            if not chunk:
                break
            prefix += chunk
        discarded = 0
        while discarded < DISCARD_BUFFERED and not content.at_eof():
            chunk = content.read_nowait(DISCARD_BUFFERED - discarded)
            if not chunk:
                break
            discarded += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass  # the answer's status stands; only the prefix is short
    if not content.at_eof():
        response.close()  # drop the connection with the rest of the body unread, rather than drain it
    return prefix


class Deliverer:
    """Async POSTs, each bounded in time and in what is read back, with slots shared fairly between hosts.

    aiohttp rather than httpx on this hot path: on this machine httpx's async pool managed 120-460
    POSTs/s (falling as concurrency rose) where aiohttp managed 2,300-4,300 (bench/README.md).
    """

    def __init__(
        self,
        request_timeout: timedelta = timedelta(seconds=10),
        connect_timeout: timedelta = timedelta(seconds=5),
        concurrency: int = 256,
        per_host: int = 32,
        signer: Signer | None = None,
        guard: TargetChecker | None = None,
    ) -> None:
        self.signer = signer
        self.guard = guard
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout.total_seconds(), sock_connect=connect_timeout.total_seconds()
        )
        self._concurrency = concurrency
        self.slots = HostSlots(concurrency, per_host)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the session inside the running event loop."""
        # No per-host limit in the connector: it keys on the pinned address, so names sharing an ingress
        # address would queue behind each other there; the per-name windows (``HostSlots``) are the bound.
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def deliver(self, timer: Timer, attempt: int, fired_at: datetime) -> Attempt:
        """POST ``timer`` once; every failure, anticipated or not, comes back as a non-ok Attempt."""
        url = timer.webhook_url
        started = time.perf_counter()
        slot = await self.slots.acquire(_route(url).host)
        answered: bool | None = None  # the host's window grows when True, shrinks when False
        try:
            status, prefix = await self._post(timer, attempt, fired_at)
            answered = True
        except RefusedTarget as exc:
            return Attempt(False, error=error_text(exc, url), retryable=False, duration=time.perf_counter() - started)
        except TimeoutError:
            answered = False
            return Attempt(False, error="timeout", duration=time.perf_counter() - started)
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:  # refused, reset, not resolved
            answered = False
            return Attempt(False, error=error_text(exc, url), duration=time.perf_counter() - started)
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # a malformed answer, an unusable URL
            return Attempt(False, error=error_text(exc, url), duration=time.perf_counter() - started)
        except Exception as exc:
            # A bug here, in a guard or in the signing library: still an attempt with an outcome, retried per policy.
            return Attempt(False, error=log_unexpected(exc, timer), duration=time.perf_counter() - started)
        finally:
            self.slots.release(slot, answered)
        duration = time.perf_counter() - started
        if 200 <= status < 300:
            return Attempt(True, status, duration=duration, body_prefix=prefix)
        return Attempt(False, status, error=f"HTTP {status}", duration=duration, body_prefix=prefix)

    async def _post(self, timer: Timer, attempt: int, fired_at: datetime) -> tuple[int, bytes]:
        """The status and body prefix of one POST, sent to the address the target check allowed."""
        assert self._session is not None, "call start() first"
        body = build_body(timer, attempt, fired_at)
        headers = build_headers(timer, body, fired_at, self.signer)
        url, server_name = timer.webhook_url, None
        if self.guard is not None:
            route = _route(url)
            address = await self.guard.check(url)
            url = _pinned(url, address)
            headers["Host"] = route.host_header
            server_name = route.server_name
        async with self._session.post(
            url, data=body, headers=headers, allow_redirects=False, server_hostname=server_name
        ) as response:
            # Most receivers answer with no body at all: no read (and no coroutine) for those.
            return response.status, b"" if response.content.at_eof() else await _read_prefix(response)

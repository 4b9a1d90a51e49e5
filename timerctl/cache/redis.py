"""The Redis read cache: a timer's record under ``<prefix>timer:<timerId>`` until its expiry plus a grace.

Redis is an accelerator, never the source of truth. Every Redis error in get/put becomes a miss or
a no-op with one warning per cache, and after an error Redis is left alone for ``retry_after`` seconds
so a dead server costs one short timeout per command, not one per timer of a bulk import.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from urllib.parse import unquote, unquote_plus

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from timerctl.model import BackendUnavailable, InvalidInput, Timer, utc
from timerctl.redaction import one_line, redact_url

DEFAULT_TIMEOUT = 0.5
DEFAULT_RETRY_AFTER = 30.0


#: A ``password=`` query option (redis-py takes the password from the query too).
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)")


def _secrets(url: str) -> set[str]:
    """The credentials in ``url`` (the password of ``user:password@`` and any ``password=`` in the query),
    as written and percent-decoded, found without trusting the URL to parse."""
    userinfo, at, location = url.partition("://")[2].rpartition("@")
    found = {userinfo.partition(":")[2]} if at else set()
    found.update(secret for _, secret in _QUERY_PASSWORD.findall(location))
    return {form for secret in found for form in (secret, unquote(secret), unquote_plus(secret)) if form}


class RedisCache:
    """Timers cached in Redis at ``url``; failures degrade to misses with a single ``warn`` line."""

    def __init__(
        self,
        url: str,
        *,
        grace: timedelta,
        warn: Callable[[str], None],
        prefix: str = "timerctl:",
        timeout: float = DEFAULT_TIMEOUT,
        retry_after: float = DEFAULT_RETRY_AFTER,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = redact_url(url)
        self._secrets = _secrets(url)
        self.grace = grace
        self.prefix = prefix
        self._warn = warn
        self._warned = False
        self._retry_after = retry_after
        self._monotonic = monotonic
        self._down_until: float | None = None
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                # One immediate retry covers a pooled connection the server closed; more would only
                # multiply the timeout a dead server costs.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise InvalidInput(
                f"Redis URL {self.url!r} is invalid: {self._reason(exc)}; "
                "expected e.g. redis://[user:password@]host[:port][/db]"
            ) from exc

    def key(self, timer_id: str) -> str:
        return f"{self.prefix}timer:{timer_id}"

    def ttl(self, timer: Timer, now: datetime) -> int:
        """Whole seconds to keep ``timer``: until its expiry plus the grace, just the grace once final."""
        left = 0.0 if timer.status.is_final else (timer.expiry_time - utc(now)).total_seconds()
        seconds = left + self.grace.total_seconds()
        return max(1, math.ceil(seconds))

    def get(self, timer_id: str) -> Timer | None:
        """The cached timer, or None on a miss, a corrupt entry (deleted) or an unreachable Redis."""
        if self._resting():
            return None
        key = self.key(timer_id)
        try:
            raw = self._client.get(key)
            if raw is None:
                return None
            timer = _decode(raw)
            if timer is None or timer.timer_id != timer_id:
                self._client.delete(key)
                return None
        except RedisError as exc:
            self._failed(exc)
            return None
        self._down_until = None
        return timer

    def put(self, timer: Timer, now: datetime) -> None:
        """Cache ``timer`` until its expiry plus the grace period; nothing when Redis is unreachable."""
        if self._resting():
            return
        try:
            self._client.set(self.key(timer.timer_id), _encode(timer), ex=self.ttl(timer, now))
        except RedisError as exc:
            self._failed(exc)
            return
        self._down_until = None

    def put_many(self, timers: Iterable[Timer], now: datetime) -> None:
        """Cache every timer in one round trip; nothing when Redis is unreachable."""
        if self._resting():
            return
        entries = [(self.key(t.timer_id), _encode(t), self.ttl(t, now)) for t in timers]
        if not entries:
            return
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for key, value, ttl in entries:
                    pipe.set(key, value, ex=ttl)
                pipe.execute()
        except RedisError as exc:
            self._failed(exc)
            return
        self._down_until = None

    def ping(self) -> None:
        """Return when Redis answers; BackendUnavailable naming the (redacted) URL when it does not."""
        try:
            self._client.ping()
        except RedisError as exc:
            raise BackendUnavailable(f"Redis at {self.url} unreachable: {self._reason(exc)}") from exc
        self._down_until = None

    def close(self) -> None:
        self._client.close()

    def _resting(self) -> bool:
        """True while Redis failed less than ``retry_after`` seconds ago, so calls skip it at once."""
        return self._down_until is not None and self._monotonic() < self._down_until

    def _failed(self, exc: RedisError) -> None:
        self._down_until = self._monotonic() + self._retry_after
        if not self._warned:
            self._warned = True
            self._warn(f"Redis at {self.url} unreachable ({self._reason(exc)}); reading from the store")

    def _reason(self, exc: BaseException) -> str:
        """The error on one line, with the URL's password masked should the client ever echo it."""
        text = one_line(exc)
        for secret in sorted(self._secrets, key=len, reverse=True):  # longest first: no part left showing
            text = text.replace(secret, "***")
        return text


def _encode(timer: Timer) -> str:
    return json.dumps(timer.to_record())


def _decode(raw: object) -> Timer | None:
    """The Timer in a cached value, or None when the value is not a valid timer record."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        return Timer.from_record(json.loads(raw))
    except (ValueError, InvalidInput):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None

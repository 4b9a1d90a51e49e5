"""Redis fixtures: a real server on its own flushed DB, and a port where nothing listens.

A Redis that does not answer skips the test locally but fails it when ``CI`` is set, so a CI run can
never go green by skipping its Redis tests (dramatiq's ``check_redis``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from timerctl.redaction import redact_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
#: The DB the tests own and flush; nothing else should live there.
TEST_DB = 13


def _test_db_url() -> str:
    """The test Redis URL with its path set to the test DB (an explicit ``/N`` in the env is kept)."""
    url = os.environ.get("TIMERCTL_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss") and parts.path.strip("/") == "":
        parts = parts._replace(path=f"/{TEST_DB}")
    return urlunsplit(parts)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of an empty Redis DB, flushed again after the test."""
    url = _test_db_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        message = f"Redis at {redact_url(url)} is not answering ({exc}); set TIMERCTL_TEST_REDIS_URL to use another"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL on a free local port where nothing listens (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"

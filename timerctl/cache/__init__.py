"""The read cache in front of the store: Redis when configured, else none. ``open_cache`` picks it."""

from __future__ import annotations

from collections.abc import Callable

from timerctl.cache.base import Cache, NoCache
from timerctl.config import Settings

__all__ = ["Cache", "NoCache", "open_cache"]


def open_cache(settings: Settings, warn: Callable[[str], None]) -> Cache:
    """Redis when ``TIMERCTL_REDIS_URL`` is set, else no cache."""
    if not settings.redis_url:
        return NoCache()
    from timerctl.cache.redis import RedisCache

    return RedisCache(settings.redis_url, grace=settings.cache_grace, warn=warn)

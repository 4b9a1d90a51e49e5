"""Stores: where timers live. ``open_store`` picks the backend from the settings."""

from __future__ import annotations

from timerctl.config import Settings
from timerctl.stores.base import Store

__all__ = ["Store", "open_store"]


def open_store(settings: Settings) -> Store:
    """MongoDB when ``TIMERCTL_MONGO_URI`` is set, else the embedded SQLite file."""
    if settings.mongo_uri:
        from timerctl.stores.mongo import MongoStore

        return MongoStore.from_uri(settings.mongo_uri)
    from timerctl.stores.sqlite import SqliteStore

    return SqliteStore(settings.db_path)

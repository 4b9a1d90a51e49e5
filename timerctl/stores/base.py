"""The Store protocol: the few primitive operations every backend implements.

Everything a store must guarantee is pinned down by ``tests/test_store_contract.py``, which runs
against each implementation. Leases are what make several runners safe: ``claim_due`` moves timers to
Running with ``lease_owner``/``lease_until`` in one atomic step, and every later write names the owner,
so a runner whose lease was taken over cannot overwrite the new owner's outcome.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from timerctl.model import Status, Timer


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one claimed timer, written back by its runner.

    ``status`` is Finished (delivered), Failed (gave up) or Scheduled (retry at ``due_at``).
    """

    timer_id: str
    status: Status
    attempts: int
    fired_at: datetime | None = None
    last_error: str | None = None
    due_at: datetime | None = None


class Store(Protocol):
    """Durable timers. Methods are safe to call from several processes on the same backing store."""

    def insert(self, timer: Timer) -> tuple[Timer, bool]:
        """``(timer as stored, True)`` when the id was absent, else ``(the existing timer, False)``: first write wins.

        Atomic: of any number of concurrent inserts of one id, from any process, exactly one is told new.
        """
        ...

    def insert_many(self, timers: Sequence[Timer]) -> int:
        """Insert the timers whose ids are absent, idempotently (a retried batch is safe); returns how many were new."""
        ...

    def get(self, timer_id: str) -> Timer | None: ...

    def list(
        self, status: Status | None = None, limit: int = 100, due_before: datetime | None = None
    ) -> builtins.list[Timer]:
        """Timers ordered by expiry (soonest first), optionally filtered."""
        ...

    def cancel(self, timer_id: str, fallback: Timer | None = None) -> Timer:
        """Cancel a Scheduled timer. NotFound when absent and no ``fallback``; Conflict when not Scheduled.

        ``fallback`` is a timer known to exist elsewhere (still in the queue): it is stored as Cancelled,
        a tombstone that makes the create consumed later a no-op.
        """
        ...

    def claim_due(
        self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[Timer]:
        """Atomically claim up to ``limit`` timers, oldest due first, that are Scheduled and due by ``until``
        or Running with a lease that expired before ``now``; they become Running, leased to ``owner``."""
        ...

    def renew(self, owner: str, timer_ids: Sequence[str], lease_until: datetime) -> set[str]:
        """Extend ``owner``'s leases; returns the ids still held (a lost lease is missing)."""
        ...

    def release(self, owner: str, timer_ids: Sequence[str]) -> int:
        """Hand claimed, unstarted timers back as Scheduled; returns how many were released."""
        ...

    def complete(self, owner: str, outcomes: Sequence[Outcome]) -> builtins.list[str]:
        """Record delivery outcomes for timers ``owner`` still leases; returns the ids recorded."""
        ...

    def next_due(self) -> datetime | None:
        """When the soonest Scheduled timer is due, for sleeping exactly until then."""
        ...

    def counts(self) -> dict[Status, int]:
        """How many timers are in each status."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable when the store cannot be reached."""
        ...

    def close(self) -> None: ...

"""The client side of timerctl: create, get, list and change timers over whichever backends are configured.

The CLI and the HTTP API both call this and nothing below it. Backends open lazily: a create through
Kafka never touches the store unless an ``--id`` must be checked against it.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from timerctl import changes
from timerctl.attempts import Delivery
from timerctl.cache import Cache, open_cache
from timerctl.changes import Update
from timerctl.clock import Clock, system_clock
from timerctl.config import Settings
from timerctl.model import (
    BackendUnavailable,
    Conflict,
    InvalidInput,
    NotFound,
    Status,
    Timer,
    TimerSpec,
    check_instant,
    utc,
    validate_timer_id,
)
from timerctl.queue import Queue, open_queue
from timerctl.stores import Store, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Created:
    """What a create did: ``timer`` as stored, and whether this call made it (``new``) or found it."""

    timer: Timer
    new: bool


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line of a ``--from-file`` import: the timer created, or the error for that line."""

    line: int
    timer: Timer | None = None
    error: str | None = None


@dataclass
class TimerService:
    """Timers over the configured queue, store and cache; ``clock`` is injectable for tests."""

    settings: Settings
    clock: Clock = system_clock
    warn: Callable[[str], None] = log.warning
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @cached_property
    def store(self) -> Store:
        store = open_store(self.settings)
        self._closers.append(store.close)
        return store

    @cached_property
    def queue(self) -> Queue:
        queue = open_queue(self.settings, lambda: self.store)
        self._closers.append(queue.close)
        return queue

    @cached_property
    def cache(self) -> Cache:
        cache = open_cache(self.settings, self.warn)
        self._closers.append(cache.close)
        return cache

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # closing must never mask the command's own outcome
                log.debug("error while closing a backend", exc_info=True)
        self._closers.clear()

    def __enter__(self) -> TimerService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lookup(self, timer_id: str) -> Timer | None:
        return self.cache.get(timer_id) or self.store.get(timer_id)

    def create(self, spec: TimerSpec) -> Created:
        """The timer created, or the existing one for a repeated ``--id`` with the same spec, saying which.

        Conflict when the id exists with a different spec; BackendUnavailable when the queue is down. Of
        any number of concurrent creates of one id, exactly one is told ``new`` when the queue writes the
        store itself: the insert decides. Through Kafka only the lookup before publishing decides, so two
        creates racing within the same few milliseconds can both be told ``new``; the consumer keeps the
        first, and the other (if its spec differed) is dropped without a Conflict.
        """
        now = self.clock()
        if spec.timer_id is not None:
            # Looked up before the time checks: a retried `--at T` after T must still find its timer.
            existing = self._lookup(validate_timer_id(spec.timer_id))
            if existing is not None:
                return Created(_same_or_conflict(spec, existing), new=False)
        timer = spec.resolve(now, self.settings.max_horizon)
        stored, new = self.queue.submit_one(timer)
        if not new:
            # Another client created the same id between our lookup and our insert.
            return Created(_same_or_conflict(spec, stored), new=False)
        self.cache.put(stored, now)
        return Created(stored, new=True)

    def create_many(
        self, specs: Iterable[tuple[int, TimerSpec | InvalidInput]], batch: int = 10_000
    ) -> Iterator[LineResult]:
        """One result per line, in input order, each batch's once its timers are stored.

        A batch holds up to ``batch`` timers, or a tenth as many with payloads (up to 64 KiB each): memory
        stays bounded, and SQLite commits (rewriting the touched index pages) ten times per 100,000 lines.
        Invalid lines wait in their batch too, so a script can pair output lines with input lines.
        """
        pending: list[LineResult] = []
        size = 0
        horizon = self.settings.max_horizon
        for line, spec in specs:
            if isinstance(spec, InvalidInput):
                pending.append(LineResult(line, error=str(spec)))
                continue
            try:
                timer = spec.resolve(self.clock(), horizon)
            except InvalidInput as exc:
                pending.append(LineResult(line, error=str(exc)))
                continue
            pending.append(LineResult(line, timer=timer))
            size += 1 if timer.payload is None else 10
            if size >= batch:
                yield from self._flush(pending)
                pending = []
                size = 0
        if pending:
            yield from self._flush(pending)

    def _flush(self, pending: Sequence[LineResult]) -> Iterator[LineResult]:
        timers = [r.timer for r in pending if r.timer is not None]
        try:
            self.queue.submit(timers)
        except BackendUnavailable:
            # Nothing of this batch is acknowledged; its invalid lines are still reported before the failure.
            yield from (r for r in pending if r.timer is None)
            raise
        self.cache.put_many(timers, self.clock())
        yield from pending

    def get(self, timer_id: str) -> Timer:
        """The timer from the cache, else the store; NotFound when neither has it."""
        timer = self._lookup(timer_id)
        if timer is None:
            raise NotFound(timer_id)
        return timer

    def list(
        self,
        status: Status | None = None,
        limit: int = 100,
        due_before: datetime | None = None,
        ended_after: datetime | None = None,
        url_prefix: str | None = None,
    ) -> list[Timer]:
        return self.store.find(
            status=status, limit=limit, due_before=due_before, ended_after=ended_after, url_prefix=url_prefix
        )

    def deliveries(self, timer_id: str) -> builtins.list[Delivery]:  # ``list`` is the method above
        """The attempts kept for a timer, oldest first (empty for one never attempted or not stored yet)."""
        return self.store.deliveries(timer_id)

    def cancel(self, timer_id: str) -> Timer:
        """Cancel at once in the store (a tombstone when the create is still queued), then tell the queue."""
        now = utc(self.clock())
        done = self.store.cancel(timer_id, now, fallback=self._queued(timer_id))
        self.cache.put(done, now)
        try:
            self.queue.submit_cancel(timer_id)
        except BackendUnavailable as exc:
            # The store already holds the cancel; the queued record only keeps replicas in order.
            self.warn(f"cancel of {timer_id} stored, but not published to the queue: {exc}")
        return done

    def update(self, timer_id: str, change: Update) -> Timer:
        """Change a Scheduled or Retrying timer in place; InvalidInput for an empty change."""
        if change.empty:
            raise InvalidInput("nothing to change; give a new time (--in, --at, ...), --url, --payload or --on-failure")
        return self._change(timer_id, "update", lambda timer: changes.update(timer, change))

    def fire(self, timer_id: str) -> Timer:
        """Make a Scheduled or Retrying timer due now."""
        now = utc(self.clock())
        return self._change(timer_id, "fire", lambda timer: changes.fire_now(timer, now))

    def retry(self, timer_id: str, at: datetime | None = None) -> Timer:
        """Schedule a Failed timer again, due ``at`` (now when None), with a fresh attempt budget."""
        now = utc(self.clock())
        when = check_instant(at, now, self.settings.max_horizon) if at is not None else now
        return self._change(timer_id, "retry", lambda timer: changes.retry(timer, when))

    def retry_matching(
        self,
        since: datetime | None = None,
        url_prefix: str | None = None,
        at: datetime | None = None,
        progress: Callable[[int], None] = lambda moved: None,
        page: int = 500,
    ) -> Iterator[Timer]:
        """Retry every Failed timer that ended at or after ``since`` and whose URL starts with ``url_prefix``.

        Yields each timer moved; ``progress`` is told after every page how many were looked at. A timer
        that stopped being Failed meanwhile (retried by someone else) is skipped, not an error.
        """
        seen: set[str] = set()
        while True:
            batch = [
                t
                for t in self.store.find(Status.FAILED, limit=page, ended_after=since, url_prefix=url_prefix)
                if t.timer_id not in seen
            ]
            if not batch:
                return
            for timer in batch:
                seen.add(timer.timer_id)
                try:
                    yield self.retry(timer.timer_id, at)
                except (Conflict, NotFound):
                    continue
            progress(len(seen))

    def purge(self, statuses: Sequence[Status], older_than: timedelta, dry_run: bool = False, batch: int = 500) -> int:
        """Delete ended timers in ``statuses`` that ended more than ``older_than`` ago; how many (would be)."""
        for status in statuses:
            if not status.is_final:
                raise InvalidInput(f"only ended timers can be purged; {status.value} is not an end state")
        before = self.clock() - older_than
        if dry_run:
            return self.store.purgeable(statuses, before)
        total = 0
        while (deleted := self.store.purge(statuses, before, batch)) > 0:
            total += deleted
        return total

    def _queued(self, timer_id: str) -> Timer | None:
        """The cached copy of a timer whose create may still be in the queue (a fallback for changes)."""
        cached = self.cache.get(timer_id)
        return cached if cached is not None and cached.status is Status.SCHEDULED else None

    def _change(self, timer_id: str, op: str, rule: Callable[[Timer], Timer]) -> Timer:
        """Apply ``rule`` in the store (to the queued copy when the create is not stored yet), cache the
        result and publish it, so replicas and a create still queued stay in order."""
        done = self.store.modify(timer_id, rule, fallback=self._queued(timer_id))
        self.cache.put(done, self.clock())
        try:
            self.queue.submit_change(op, done)
        except BackendUnavailable as exc:
            self.warn(f"{op} of {timer_id} stored, but not published to the queue: {exc}")
        return done

    def counts(self) -> dict[Status, int]:
        return self.store.counts()

    def check(self) -> dict[str, tuple[str, float | None, str | None]]:
        """Each part's backend with its round-trip seconds, or the error that made it unreachable."""
        import time

        parts: dict[str, tuple[str, float | None, str | None]] = {}
        described = self.settings.describe()
        probes: dict[str, Callable[[], Any]] = {
            "store": lambda: self.store.ping(),
            "cache": lambda: self.cache.ping(),
            "queue": lambda: self.queue.ping(),
        }
        for part in ("store", "queue", "cache"):
            start = time.perf_counter()
            try:
                probes[part]()
                parts[part] = (described[part], time.perf_counter() - start, None)
            except BackendUnavailable as exc:
                parts[part] = (described[part], None, str(exc))
        return parts


def health_report(parts: dict[str, tuple[str, float | None, str | None]]) -> dict[str, dict[str, Any]]:
    """``TimerService.check`` as JSON: per part its backend, ok, round trip in ms and error."""
    return {
        name: {
            "backend": backend,
            "ok": error is None,
            "rttMs": round(rtt * 1000, 2) if rtt is not None else None,
            "error": error,
        }
        for name, (backend, rtt, error) in parts.items()
    }


def _same_or_conflict(spec: TimerSpec, existing: Timer) -> Timer:
    if spec.matches(existing):
        return existing
    raise Conflict(f"timer {existing.timer_id} already exists with a different spec")

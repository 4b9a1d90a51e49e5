"""The runner daemon: claims due timers from the store and fires each at its ``expiryTime``.

Who owns what, by thread:
- the **main thread** (``Runner``) owns the store and everything about claims: it claims what falls due
  within the lookahead, renews its leases (one statement per owner), writes outcomes back in batches,
  inserts near-term creates offered by the Kafka feed, deletes ended timers past their retention, and
  hands claims back when stopping. Periodic work runs on a ``schedule.Scheduler``; everything else
  arrives in one inbox (``_inbox``): attempts finished and start batches answered by the firing loop,
  and timers offered by the feed.
- the **firing thread** (``firing.Firing``) holds the claimed timers on an event loop and POSTs each at
  its instant; the only store call made for it is the start commit just before the instant, on a
  worker thread of its own (``Store.start``, safe to call from another thread).
- with Kafka, a **feed thread** (``feed.NearTermFeed``) reads the topic and offers creates due soon.

Timers are claimed ahead of time under a lease, so firing is driven by the clock, not by the poll tick;
a runner that dies loses its leases and another takes over. The clock is injectable: with a
``ManualClock``, ``run(burst=True)`` fires exactly what is due at the clock's now, and nothing else.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import random
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import schedule

from timerctl import metrics
from timerctl.cache import Cache, NoCache, open_cache
from timerctl.clock import Clock, system_clock
from timerctl.config import Settings
from timerctl.daemons.firing import Committed, Fired, Firing
from timerctl.daemons.lifecycle import StopFlag, Watchdog, backoff, notify
from timerctl.delivery import Deliverer, Signer
from timerctl.model import BackendUnavailable, Status, Timer, format_instant
from timerctl.redaction import redact_url
from timerctl.stores.base import Store
from timerctl.targets import TargetGuard, TargetPolicy

log = logging.getLogger(__name__)

#: Upper bound on timers held in memory at once; beyond it claims wait for room.
MAX_HELD = 50_000
#: GIL switch interval while running (seconds); see ``Runner.run``.
SWITCH_INTERVAL = 0.0005
#: How long a batch of outcomes gathers before its one commit (seconds): at thousands of fires/s, a
#: commit per outcome cost an fsync and a wake-up of the firing loop each.
FLUSH_LINGER = 0.01
#: Renewals per lease period: a lease is renewed when a quarter of it has run.
RENEWALS_PER_LEASE = 4
#: Gen-0 allocation threshold while running (CPython's default is 700); see ``_quiet_gc``.
GC_THRESHOLD = 50_000
#: Ended timers deleted per retention statement: small, so the store's write lock is never held long
#: enough to delay a start commit or an outcome write.
PURGE_BATCH = 500
#: How often retention runs when the last pass found nothing more to delete (seconds); a full batch is
#: followed by the next one a tick later.
PURGE_EVERY = 30.0
PURGE_AGAIN = 0.2


@dataclass(frozen=True, slots=True)
class Offer:
    """Creates the Kafka feed read that fall due soon: to insert and claim at once."""

    timers: list[Timer]


def default_owner() -> str:
    """A lease owner id unique per process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def make_deliverer(settings: Settings) -> Deliverer:
    """The Deliverer ``serve`` uses: signing when a secret is set, the target checks always."""
    secrets = [settings.signing_secret, settings.signing_secret_previous]
    signer = Signer(secrets) if settings.signing_secret else None
    return Deliverer(
        request_timeout=settings.request_timeout,
        connect_timeout=settings.connect_timeout,
        concurrency=settings.concurrency,
        per_host=settings.per_host_concurrency,
        signer=signer,
        guard=TargetGuard(TargetPolicy.from_settings(settings.block_private_targets, settings.allowed_targets)),
    )


class Runner:
    """Fires due timers from ``store``; ``run`` is the daemon, ``run(burst=True)`` fires what is due and exits."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: Cache | None = None,
        clock: Clock = system_clock,
        owner: str | None = None,
        deliverer: Deliverer | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache or NoCache()
        self.clock = clock
        self.owner = owner or default_owner()
        self.held: dict[str, Timer] = {}  # claimed and not yet recorded
        self._inbox: queue.SimpleQueue[Fired | Committed | Offer] = queue.SimpleQueue()
        self._unwritten: list[Fired] = []  # finished attempts whose write failed: retried first
        self.firing = Firing(
            deliverer or make_deliverer(settings),
            clock,
            settings.retry,
            self._inbox.put,
            lambda timers: self.store.start(self.owner, timers),
            rand,
            report_starts=not isinstance(self.cache, NoCache),
        )
        self._next_purge = 0.0  # time.monotonic() of the next retention pass
        self._scheduler = schedule.Scheduler()
        self._store_down = backoff(first=0.1, cap=1.0)
        self._lookahead = settings.lookahead
        self.watchdog = Watchdog()
        # Read when scraped, so the firing path pays nothing for these two gauges.
        metrics.HELD.set_function(lambda: len(self.held))
        metrics.IN_FLIGHT.set_function(self.firing.posting)

    @property
    def deliverer(self) -> Deliverer:
        return self.firing.deliverer

    def offer(self, timers: list[Timer]) -> None:
        """Near-term creates to store and claim now (thread-safe: the Kafka feed calls it)."""
        self._inbox.put(Offer(timers))

    def run(self, stop: StopFlag | None = None, burst: bool = False) -> int:
        """Fire timers until ``stop`` is set, or with ``burst`` those due now and no others; returns exit code 0."""
        stop = StopFlag() if stop is None else stop
        # The firing thread must not wait the default 5 ms for the GIL while this thread parses a claim
        # batch: that wait would show up directly as lateness.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.firing.start()
        if burst:
            self._lookahead = timedelta(0)  # what is due at the clock's now: a test's clock decides
        _every(self._scheduler, self.settings.poll_interval).do(self.claim)
        _every(self._scheduler, self.settings.lease / RENEWALS_PER_LEASE).do(self.renew)
        log.info("runner %s started", self.owner, extra={"event": "runner_started"})
        notify("READY=1")
        try:
            self.claim()
            while not stop:
                self.watchdog.ping()  # from this loop: a loop that stops turning stops the pings
                self._scheduler.run_pending()
                if not burst and time.monotonic() >= self._next_purge:
                    self.purge_ended()
                self.flush(timeout=min(0.05, max(0.0, self._scheduler.idle_seconds or 0.05)), linger=FLUSH_LINGER)
                if burst and not self.held and self.claim() == 0:
                    break
        finally:
            self._drain(stop)
        return 0

    def claim(self) -> int:
        """Claim what falls due within the lookahead and hand it to the firing loop; returns how many."""
        total = 0
        while len(self.held) < MAX_HELD:
            now = self.clock()
            limit = min(self.settings.claim_batch, MAX_HELD - len(self.held))
            try:
                timers = self.store.claim_due(self.owner, now, now + self._lookahead, now + self.settings.lease, limit)
            except BackendUnavailable as exc:
                self._store_unavailable(exc)
                return total
            for timer in timers:
                self.held[timer.timer_id] = timer
            if timers:
                self.firing.hand(timers)
                self.cache.put_many(timers, now)
            total += len(timers)
            if len(timers) < limit:
                break
        return total

    def renew(self) -> None:
        """Extend the leases this runner holds that end within half a lease (one store call).

        Only those: a lease just claimed or renewed is left alone, so a runner holding thousands of timers
        rewrites a few rows per renewal, not all of them. A timer whose lease was lost (taken over,
        cancelled or changed) is not looked for here: its start commit is refused and it is dropped then.

        The store may also name timers this runner does not know it holds: a claim that was written but
        whose answer never came back (the connection broke). Those are handed back at once, or their
        leases would be renewed for as long as the runner lives and they would never fire.
        """
        now = self.clock()
        try:
            kept = self.store.renew(self.owner, now + self.settings.lease, now + self.settings.lease / 2)
        except BackendUnavailable as exc:
            self._store_unavailable(exc)
            return
        unknown = [tid for tid in kept if tid not in self.held]
        if unknown:
            log.warning("handing back %d claims whose answer was lost", len(unknown), extra={"event": "orphans"})
            try:
                self.store.release(self.owner, unknown)
            except BackendUnavailable as exc:
                self._store_unavailable(exc)  # their leases lapse instead

    def flush(self, timeout: float = 0.0, linger: float = 0.0) -> int:
        """Serve the inbox: store offered timers, then write finished attempts in one batch; how many written.

        Waits up to ``timeout`` for the first item, then ``linger`` for more to join it: one commit (and one
        wake-up of the firing loop) per batch instead of per delivery.
        """
        items: list[Fired | Committed | Offer] = []
        try:
            items.append(self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait())
            if linger > 0:
                time.sleep(linger)
            while True:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        offered = [timer for item in items if isinstance(item, Offer) for timer in item.timers]
        if offered:
            self._store_offered(offered)
        for item in items:
            if isinstance(item, Fired):
                self._unwritten.append(item)
            elif isinstance(item, Committed):
                self._committed(item)
        return self._record() if self._unwritten else 0

    def _committed(self, item: Committed) -> None:
        """A start batch answered: stop holding what the store refused; the cache shows the started Running."""
        for tid in item.refused:
            self.held.pop(tid, None)
        if item.refused:
            metrics.REFUSED_STARTS.inc(len(item.refused))
            log.info(
                "%d held timers not started: cancelled, changed or taken over since their claim",
                len(item.refused),
                extra={"event": "starts_refused"},
            )
        if item.started and not isinstance(self.cache, NoCache):
            self.cache.put_many([t.move(Status.RUNNING) for t in item.started], self.clock())

    def purge_ended(self) -> int:
        """Delete one batch of ended timers past their retention; how many. Runs again soon while more remain."""
        now = self.clock()
        settings = self.settings
        try:
            deleted = self.store.purge([Status.FINISHED, Status.CANCELLED], now - settings.retention, PURGE_BATCH)
            if deleted < PURGE_BATCH:
                deleted += self.store.purge([Status.FAILED], now - settings.failed_retention, PURGE_BATCH - deleted)
        except BackendUnavailable as exc:
            log.warning("retention pass skipped: %s", exc, extra={"event": "purge_failed"})
            deleted = 0
        self._next_purge = time.monotonic() + (PURGE_AGAIN if deleted >= PURGE_BATCH else PURGE_EVERY)
        if deleted:
            metrics.PURGED.inc(deleted)
            log.info("deleted %d ended timers past their retention", deleted, extra={"event": "purged"})
        return deleted

    def _store_offered(self, timers: list[Timer]) -> None:
        try:
            self.store.insert_many(timers)
        except BackendUnavailable as exc:
            # The persisting consumer stores them too; they are claimed from there once the store is back.
            self._store_unavailable(exc)
            return
        self.claim()

    def _record(self) -> int:
        batch = self._unwritten
        try:
            recorded = set(self.store.complete(self.owner, [fired.outcome for fired in batch]))
        except BackendUnavailable as exc:
            self._store_unavailable(exc)  # kept and retried; the leases keep others off them
            return 0
        self._unwritten = []
        self._store_down = backoff(first=0.1, cap=1.0)
        self.firing.recorded([fired.timer.timer_id for fired in batch])
        for fired in batch:
            self.held.pop(fired.timer.timer_id, None)
        if not isinstance(self.cache, NoCache):  # rebuilding each Timer for nothing cost the hot path
            done = [f.outcome.apply(f.timer.move(Status.RUNNING)) for f in batch if f.timer.timer_id in recorded]
            self.cache.put_many(done, self.clock())
        if log.isEnabledFor(logging.INFO):
            for fired in batch:
                _log_attempt(fired, fired.timer.timer_id in recorded)
        return len(recorded)

    def _store_unavailable(self, exc: Exception) -> None:
        delay = next(self._store_down)
        log.error("store unavailable, retrying in %.1fs: %s", delay, exc, extra={"event": "store_down"})
        time.sleep(delay)

    def _drain(self, stop: StopFlag) -> None:
        """Stop in order: release unstarted claims, let in-flight POSTs finish (bounded), record, close."""
        notify("STOPPING=1")
        unstarted = self.firing.take_unstarted()
        if unstarted:
            try:
                self.store.release(self.owner, unstarted)
            except BackendUnavailable as exc:
                log.error("could not release %d claims (their leases will expire): %s", len(unstarted), exc)
            for tid in unstarted:
                self.held.pop(tid, None)
        deadline = time.monotonic() + self.settings.drain_timeout.total_seconds()
        while self.held and not stop.forced.is_set() and time.monotonic() < deadline:
            self.flush(timeout=0.1)
        if self.held:
            log.warning(
                "%d deliveries still in flight at exit; their leases expire and another runner retries", len(self.held)
            )
        self.firing.close()
        self._scheduler.clear()
        log.info("runner %s stopped", self.owner, extra={"event": "runner_stopped"})


def _log_attempt(fired: Fired, recorded: bool) -> None:
    """The per-delivery log line, written once the outcome is stored (off the firing thread).

    Written after the fact, so it carries when the attempt started (``fired_at``) and how long it took
    (``duration``, seconds): the line's own time is when it was recorded, a batch later.
    """
    timer, outcome, attempt = fired.timer, fired.outcome, fired.attempt
    log.info(
        "timer %s attempt %d to %s: %s%s",
        timer.timer_id,
        outcome.attempts,
        redact_url(timer.webhook_url),
        "delivered" if attempt.ok else attempt.error,
        "" if recorded else " (not recorded: the lease was lost)",
        extra={
            "timer_id": timer.timer_id,
            "event": "fired",
            "fired_at": format_instant(fired.fired_at),
            "duration": round(attempt.duration, 6),
            "lateness": fired.lateness,
            "status": outcome.status.value,
        },
    )


def _quiet_gc() -> None:
    """Keep the cyclic GC's pauses off the firing path.

    Every POST allocates dozens of container objects (tasks, futures, aiohttp request state), so the
    default gen-0 threshold of 700 ran a collection every few deliveries, and with thousands of timers
    held the older generations' passes showed as lateness: p99 at 4,000 fires/s was 20-25 ms with the
    defaults and 5-6 ms with this (bench/README.md). What is alive at start-up (modules, settings, the
    backends' clients) is frozen out of collection; thresholds are raised, not removed, so cycles are
    still reclaimed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)


def _every(scheduler: schedule.Scheduler, period: timedelta) -> schedule.Job:
    """A job every ``period``; schedule is typed for ints but builds a timedelta, so fractions work."""
    job: schedule.Job = scheduler.every(period.total_seconds()).seconds  # type: ignore[arg-type]
    return job


def serve(settings: Settings, stop: StopFlag, store: Store | None = None, cache: Cache | None = None) -> int:
    """The ``timerctl serve runner`` entry: open the backends, run until stopped, close them."""
    from timerctl.stores import open_store

    store = store or open_store(settings)
    cache = cache or open_cache(settings, log.warning)
    runner = Runner(settings, store, cache)
    _quiet_gc()  # the process is ours: tune its collector (not in Runner, which tests run in-process)
    feed_thread = None
    if settings.kafka_bootstrap:
        from timerctl.daemons.feed import NearTermFeed

        window = max(timedelta(seconds=10), 2 * settings.lookahead)
        feed_thread = NearTermFeed(settings, runner.clock, runner.offer, window).start(stop)
    try:
        return runner.run(stop)
    finally:
        stop.stopping.set()
        if feed_thread is not None:
            feed_thread.join(timeout=15)
        cache.close()
        store.close()

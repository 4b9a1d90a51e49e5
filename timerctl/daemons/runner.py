"""The runner daemon: claims due timers from the store and fires each at its ``expiryTime``.

Two threads, each with one job:
- the main thread runs a ``schedule.Scheduler`` (claim every poll, renew leases) and writes outcomes
  back to the store in batches, so every store call happens on one thread;
- an asyncio loop thread holds the claimed timers as ``call_at`` handles and POSTs each at its instant,
  with bounded concurrency (see ``delivery.Deliverer``).

Timers are claimed ``lookahead`` seconds ahead of time under a lease, so firing is driven by the
event loop's clock, not by the poll tick; a runner that dies loses its leases and another takes over.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import queue
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import schedule

from timerctl import metrics
from timerctl.cache import Cache, NoCache
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag, backoff, notify
from timerctl.delivery import Attempt, Deliverer, Signer, decide, log_unexpected
from timerctl.model import BackendUnavailable, Status, Timer, utc
from timerctl.redaction import redact_url
from timerctl.service import Clock, system_clock
from timerctl.stores.base import Outcome, Store
from timerctl.targets import TargetGuard, TargetPolicy

log = logging.getLogger(__name__)

#: Upper bound on timers held in memory at once; beyond it claims wait for room.
MAX_HELD = 50_000
#: GIL switch interval while running (seconds); see ``Runner.run``.
SWITCH_INTERVAL = 0.0005
#: How long a batch of outcomes gathers before its one commit (seconds): at thousands of fires/s, a
#: commit per outcome cost an fsync and a wake-up of the firing loop each.
FLUSH_LINGER = 0.01
#: Gen-0 allocation threshold while running (CPython's default is 700); see ``_quiet_gc``.
GC_THRESHOLD = 50_000


def default_owner() -> str:
    """A lease owner id unique per process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def make_deliverer(settings: Settings) -> Deliverer:
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


def new_loop() -> asyncio.AbstractEventLoop:
    """The firing loop: uvloop where installed (Linux, macOS), else asyncio's own.

    On this 2-core machine uvloop cut p99 lateness at 1,000 fires/s from 17 ms to 2 ms (bench/fire.py).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runner:
    """Fires due timers from ``store``; ``run`` is the daemon, ``run(burst=True)`` drains what is due and exits."""

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
        self.deliverer = deliverer or make_deliverer(settings)
        self.rand = rand
        self.held: dict[str, Timer] = {}  # claimed and not yet recorded; touched by the main thread only
        self._outcomes: queue.Queue[tuple[Timer, Outcome]] = queue.Queue()
        self._unwritten: list[tuple[Timer, Outcome]] = []
        self._pending: dict[str, asyncio.TimerHandle] = {}  # loop thread only
        self._inflight: set[asyncio.Task[None]] = set()  # loop thread only
        self._firing: set[str] = set()  # ids being POSTed; loop thread only
        self._unrecorded: set[str] = set()  # ids POSTed whose outcome is not in the store yet; loop thread only
        self._loop = new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="timerctl-fire", daemon=True)
        self._scheduler = schedule.Scheduler()
        self._store_down = backoff(first=0.5, cap=10.0)
        self._claim_soon = threading.Event()
        self.fired = 0
        # Read when scraped, so the firing path pays nothing for these two gauges.
        metrics.HELD.set_function(lambda: len(self.held))
        metrics.IN_FLIGHT.set_function(lambda: len(self._firing))

    def wake(self) -> None:
        """Ask the main loop to claim now (thread-safe): new near-term timers are in the store."""
        self._claim_soon.set()

    # -- main thread ------------------------------------------------------------------------------

    def run(self, stop: StopFlag | None = None, burst: bool = False) -> int:
        """Fire timers until ``stop`` is set (or, with ``burst``, until nothing is due); returns exit code 0."""
        stop = StopFlag() if stop is None else stop
        # The firing thread must not wait the default 5 ms for the GIL while the main thread parses a
        # claim batch: that wait would show up directly as lateness.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.deliverer.start(), self._loop).result()
        _every(self._scheduler, self.settings.poll_interval).do(self.claim)
        _every(self._scheduler, max(0.5, self.settings.lease / 3)).do(self.renew)
        watchdog = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if watchdog:
            _every(self._scheduler, watchdog / 2e6).do(notify, "WATCHDOG=1")
        log.info("runner %s started", self.owner, extra={"event": "runner_started"})
        notify("READY=1")
        try:
            self.claim()
            while not stop:
                self._scheduler.run_pending()
                if self._claim_soon.is_set():
                    self._claim_soon.clear()
                    self.claim()
                self.flush(timeout=min(0.05, max(0.0, self._scheduler.idle_seconds or 0.05)), linger=FLUSH_LINGER)
                if burst and not self.held and self.claim() == 0:
                    break
        finally:
            self._drain(stop)
        return 0

    def claim(self) -> int:
        """Claim what falls due within the lookahead window and hand it to the loop; returns how many."""
        total = 0
        while len(self.held) < MAX_HELD:
            now = self.clock()
            limit = min(self.settings.claim_batch, MAX_HELD - len(self.held))
            try:
                timers = self.store.claim_due(
                    self.owner,
                    now,
                    now + timedelta(seconds=self.settings.lookahead),
                    now + timedelta(seconds=self.settings.lease),
                    limit,
                )
            except BackendUnavailable as exc:
                self._store_unavailable(exc)
                return total
            for timer in timers:
                self.held[timer.timer_id] = timer
            if timers:
                self._loop.call_soon_threadsafe(self._schedule_fire, timers)
                self.cache.put_many(timers, now)
            total += len(timers)
            if len(timers) < limit:
                break
        return total

    def renew(self) -> None:
        """Extend the leases of held timers; forget (and do not fire) any whose lease was lost."""
        if not self.held:
            return
        try:
            kept = self.store.renew(self.owner, list(self.held), self.clock() + timedelta(seconds=self.settings.lease))
        except BackendUnavailable as exc:
            self._store_unavailable(exc)
            return
        lost = [tid for tid in self.held if tid not in kept]
        for tid in lost:
            log.warning("lease on %s lost; another runner owns it now", tid, extra={"timer_id": tid})
            self.held.pop(tid, None)
        if lost:
            self._loop.call_soon_threadsafe(self._unschedule, lost)

    def flush(self, timeout: float = 0.0, linger: float = 0.0) -> int:
        """Write finished attempts to the store in one batch; returns how many were recorded.

        Waits up to ``timeout`` for the first outcome, then ``linger`` for more to join it: one commit
        (and one wake-up of the firing loop) per batch instead of per delivery.
        """
        batch = self._unwritten
        try:
            batch.append(self._outcomes.get(timeout=timeout) if timeout > 0 else self._outcomes.get_nowait())
            if linger > 0:
                time.sleep(linger)
            while True:
                batch.append(self._outcomes.get_nowait())
        except queue.Empty:
            pass
        if not batch:
            return 0
        try:
            recorded: set[str] = set(self.store.complete(self.owner, [o for _, o in batch]))
        except BackendUnavailable as exc:
            self._unwritten = batch  # kept in memory and retried; the leases keep others off them
            self._store_unavailable(exc)
            return 0
        self._unwritten = []
        self._loop.call_soon_threadsafe(self._unrecorded.difference_update, [t.timer_id for t, _ in batch])
        for timer, _ in batch:
            self.held.pop(timer.timer_id, None)
        if not isinstance(self.cache, NoCache):  # rebuilding each Timer for nothing cost the hot path
            updated = [_apply(timer, outcome) for timer, outcome in batch if timer.timer_id in recorded]
            self.cache.put_many(updated, self.clock())
        self._store_down = backoff(first=0.5, cap=10.0)
        return len(recorded)

    def _store_unavailable(self, exc: Exception) -> None:
        delay = next(self._store_down)
        log.error("store unavailable, retrying in %.1fs: %s", delay, exc, extra={"event": "store_down"})
        time.sleep(min(delay, 1.0))

    def _drain(self, stop: StopFlag) -> None:
        """Stop in order: release unstarted claims, let in-flight POSTs finish (bounded), record, close."""
        notify("STOPPING=1")
        unstarted = asyncio.run_coroutine_threadsafe(self._take_unstarted(), self._loop).result()
        if unstarted:
            try:
                self.store.release(self.owner, unstarted)
            except BackendUnavailable as exc:
                log.error("could not release %d claims (their leases will expire): %s", len(unstarted), exc)
            for tid in unstarted:
                self.held.pop(tid, None)
        deadline = time.monotonic() + self.settings.drain_timeout
        while self.held and not stop.forced.is_set() and time.monotonic() < deadline:
            self.flush(timeout=0.1)
        if self.held:
            log.warning(
                "%d deliveries still in flight at exit; their leases expire and another runner retries", len(self.held)
            )
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
        self._scheduler.clear()
        log.info("runner %s stopped", self.owner, extra={"event": "runner_stopped"})

    # -- event loop thread ------------------------------------------------------------------------

    def _schedule_fire(self, timers: list[Timer]) -> None:
        now = self.clock()
        for timer in timers:
            tid = timer.timer_id
            if tid in self._pending or tid in self._firing or tid in self._unrecorded:
                # A re-claim of our own (its lease lapsed while the store was slow or down) must not start a
                # second POST: the one made is recorded by the next flush, which the new lease lets through.
                continue
            delay = max(0.0, (timer.due_at - now).total_seconds())
            self._pending[timer.timer_id] = self._loop.call_later(delay, self._fire, timer)

    def _unschedule(self, timer_ids: list[str]) -> None:
        for tid in timer_ids:
            handle = self._pending.pop(tid, None)
            if handle is not None:
                handle.cancel()

    def _fire(self, timer: Timer) -> None:
        early = (timer.due_at - self.clock()).total_seconds()
        if early > 0:  # the loop's timers have millisecond resolution and may wake just before the instant
            self._pending[timer.timer_id] = self._loop.call_later(early, self._fire, timer)
            return
        self._pending.pop(timer.timer_id, None)
        self._firing.add(timer.timer_id)
        task = self._loop.create_task(self._deliver(timer))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _deliver(self, timer: Timer) -> None:
        attempt = timer.attempts + 1
        fired_at = utc(self.clock())  # the body's millisecond precision, so the store records the same instant
        lateness = (fired_at - timer.due_at).total_seconds()
        metrics.LATENESS.observe(max(0.0, lateness))
        try:
            result = await self.deliverer.deliver(timer, attempt, fired_at)
        except asyncio.CancelledError:
            # Shutdown past the drain bound: nothing is recorded; the lease lapses and another runner retries.
            raise
        except BaseException as exc:
            # Whatever else escaped ends as a recorded failed attempt (dramatiq's worker discipline): a timer
            # left held would have its lease renewed for ever, Running with nobody working on it. Signals
            # reach the main thread only, so nothing here is a request to stop.
            result = Attempt(False, error=log_unexpected(exc, timer))
        # Finished records the instant the receiver was sent, not when it answered.
        outcome = decide(timer, attempt, result, self.clock(), self.settings.retry, self.rand(), fired_at)
        _count(result.ok, result.duration, outcome.status)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "timer %s attempt %d to %s: %s",
                timer.timer_id,
                attempt,
                redact_url(timer.webhook_url),
                "delivered" if result.ok else result.error,
                extra={
                    "timer_id": timer.timer_id,
                    "event": "fired",
                    "lateness": lateness,
                    "status": outcome.status.value,
                },
            )
        self.fired += 1
        # Before the outcome is out, so a retry claimed once it is recorded can fire (flush clears the mark).
        self._firing.discard(timer.timer_id)
        self._unrecorded.add(timer.timer_id)
        self._outcomes.put((timer, outcome))

    async def _take_unstarted(self) -> list[str]:
        ids = list(self._pending)
        self._unschedule(ids)
        return ids

    async def _shutdown(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await self.deliverer.aclose()


_FIRED = {True: metrics.FIRED.labels(result="ok"), False: metrics.FIRED.labels(result="error")}
_ENDED = {Status.FINISHED: metrics.FINISHED, Status.FAILED: metrics.FAILED}


def _count(ok: bool, duration: float, status: Status) -> None:
    """Record one attempt in the Prometheus metrics."""
    metrics.DELIVERY.observe(duration)
    _FIRED[ok].inc()
    _ENDED.get(status, metrics.RETRIED).inc()


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


def _every(scheduler: schedule.Scheduler, seconds: float) -> schedule.Job:
    """A job every ``seconds``; schedule is typed for ints but builds a timedelta, so fractions work."""
    job: schedule.Job = scheduler.every(seconds).seconds  # type: ignore[arg-type]
    return job


def _apply(timer: Timer, outcome: Outcome) -> Timer:
    """``timer`` as the store now has it after ``outcome`` (for the cache)."""
    return replace(
        timer,
        status=outcome.status,
        attempts=outcome.attempts,
        fired_at=outcome.fired_at,
        last_error=outcome.last_error,
        due_at=outcome.due_at or timer.due_at,
        lease_owner=None,
        lease_until=None,
    )


def serve(settings: Settings, stop: StopFlag, store: Store | None = None, cache: Cache | None = None) -> int:
    """The ``timerctl serve runner`` entry: open the backends, run until stopped, close them."""
    from timerctl.service import open_cache
    from timerctl.stores import open_store

    store = store or open_store(settings)
    cache = cache or open_cache(settings, log.warning)
    runner = Runner(settings, store, cache)
    _quiet_gc()  # the process is ours: tune its collector (not in Runner, which tests run in-process)
    feed_thread = None
    if settings.kafka_bootstrap:
        from timerctl.daemons.feed import NearTermFeed

        window = timedelta(seconds=max(10.0, 2 * settings.lookahead))
        feed_thread = NearTermFeed(settings, store, runner.clock, runner.wake, window).start(stop)
    try:
        return runner.run(stop)
    finally:
        stop.stopping.set()
        if feed_thread is not None:
            feed_thread.join(timeout=15)
        cache.close()
        store.close()

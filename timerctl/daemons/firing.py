"""The firing loop: claimed timers held on an event loop of their own, each POSTed at its instant.

``Firing`` owns one thread running an asyncio loop (uvloop where installed). Its state — the armed
handles, the POSTs in flight, the ids awaiting their write — is touched on that thread only: the
runner's main thread reaches it through the thread-safe methods (``hand``, ``drop``, ``recorded``,
``take_unstarted``, ``close``), and every finished attempt leaves it through ``report``, a callback that
must itself be thread-safe (the runner's inbox). The store is never called from here.

Firing is driven by the injected clock, not by the poll tick. Each timer goes through two steps: a
start tick (every ``START_EVERY`` while timers are held) takes every timer due within ``START_AHEAD``
into one batch that ``starter`` commits in one store statement (on a worker thread of its own, so the
loop never waits for the store) — from then on the timer is Running and can no longer be cancelled; a
timer the store refuses (cancelled, changed or taken over since it was claimed) is dropped. At its
instant the committed timer is POSTed; one woken early (the loop's timers have millisecond resolution)
is re-armed, so nothing is POSTed before its instant.
Everything before the start commit can be undone by a person: a cancel that lands before it wins.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from timerctl import metrics
from timerctl.attempts import Outcome, RetryPolicy
from timerctl.clock import Clock
from timerctl.delivery import Attempt, Deliverer, decide, log_unexpected
from timerctl.model import Status, Timer, utc

log = logging.getLogger(__name__)

#: How far ahead of their instants timers are committed to (seconds): a start tick commits every held
#: timer due within this. A cancel stored before the commit wins; since no start is committed earlier than
#: this before its instant, a cancel that lands 100 ms before always does (README, "States and the cancel
#: window").
START_AHEAD = 0.09
#: How often the start tick runs while timers are held (seconds): a timer is committed between
#: ``START_AHEAD`` and ``START_AHEAD - START_EVERY`` before its instant, leaving the store that long to answer.
START_EVERY = 0.025
#: Wait before committing again a batch whose commit failed (the store was unavailable).
START_RETRY = 0.2

#: Commits the start of timers (``Store.start`` bound to the runner's owner id); returns the ids started.
Starter = Callable[[Sequence[Timer]], list[str]]


@dataclass(frozen=True, slots=True)
class Fired:
    """One attempt made: the timer as held, the outcome to record, what the POST gave, when it started."""

    timer: Timer
    outcome: Outcome
    attempt: Attempt
    fired_at: datetime

    @property
    def lateness(self) -> float:
        """Seconds between when the attempt was due and when it started."""
        return (self.fired_at - self.timer.due_at).total_seconds()


@dataclass(frozen=True, slots=True)
class Committed:
    """A start batch the store answered: the timers now Running, and the ids it refused (to stop holding)."""

    started: list[Timer]
    refused: list[str]


def new_loop() -> asyncio.AbstractEventLoop:
    """The firing loop: uvloop where installed (Linux, macOS), else asyncio's own.

    On this 2-core machine uvloop cut p99 lateness at 1,000 fires/s from 17 ms to 2 ms (bench/fire.py).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Firing:
    """Holds claimed timers and POSTs each at its instant; reports every attempt through ``report``."""

    def __init__(
        self,
        deliverer: Deliverer,
        clock: Clock,
        retry: RetryPolicy,
        report: Callable[[Fired | Committed], None],
        starter: Starter,
        rand: Callable[[], float] = random.random,
        report_starts: bool = False,
    ) -> None:
        self.deliverer = deliverer
        self.clock = clock
        self.retry = retry
        self.report = report
        self.starter = starter
        self.rand = rand
        #: Report every answered start batch (for a cache to show Running), not only those with refusals.
        self.report_starts = report_starts
        self._loop = new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="timerctl-fire", daemon=True)
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="timerctl-start")
        # Loop thread only, below.
        self._held: dict[str, Timer] = {}  # every timer held and not POSTed yet, by id
        self._unstarted: list[tuple[datetime, str, Timer]] = []  # heap by due: the held ones not committed yet
        self._armed: dict[str, asyncio.TimerHandle] = {}  # committed, waiting for their instant
        self._tick: asyncio.TimerHandle | None = None
        self._tick_at = 0.0  # loop time of the tick scheduled
        self._committing: set[asyncio.Future[list[str]]] = set()  # batches sent to the store, unanswered
        self._inflight: set[asyncio.Task[None]] = set()
        self._posting: set[str] = set()  # ids whose POST is under way
        self._unrecorded: set[str] = set()  # ids POSTed whose outcome the store has not recorded yet

    # -- any thread -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop's thread and the deliverer's session on it."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.deliverer.start(), self._loop).result()

    def hand(self, timers: list[Timer]) -> None:
        """Arm ``timers`` to start and fire at their ``due_at``; one posting or unrecorded is skipped, and one
        already armed is replaced (a re-claim after a change carries the new revision)."""
        self._loop.call_soon_threadsafe(self._arm, timers)

    def recorded(self, timer_ids: list[str]) -> None:
        """The store holds these outcomes: a later claim of the same ids (a retry) may fire again."""
        self._loop.call_soon_threadsafe(self._unrecorded.difference_update, timer_ids)

    def take_unstarted(self) -> list[str]:
        """Disarm every timer not started yet and return their ids (to hand the claims back)."""
        return asyncio.run_coroutine_threadsafe(self._take_unstarted(), self._loop).result()

    def posting(self) -> int:
        """How many POSTs are under way (read from any thread for the metrics gauge: a snapshot)."""
        return len(self._posting)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what is still in flight, close the deliverer, stop the loop and its thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=timeout)
        if not self._thread.is_alive():
            self._loop.close()

    # -- loop thread ------------------------------------------------------------------------------

    def _arm(self, timers: list[Timer]) -> None:
        for timer in timers:
            tid = timer.timer_id
            if tid in self._posting or tid in self._unrecorded:
                # A re-claim of our own (its lease lapsed while the store was slow or down) must not start a
                # second POST: the one made is recorded by the next write, which the new lease lets through.
                continue
            held = self._held.get(tid)
            if held is not None:
                if held.revision == timer.revision and held.due_at == timer.due_at:
                    continue  # the same timer claimed again: it keeps its place
                self._disarm([tid])
            self._held[tid] = timer
            heapq.heappush(self._unstarted, (timer.due_at, tid, timer))
        if self._unstarted:
            self._schedule_tick((self._unstarted[0][0] - self.clock()).total_seconds() - START_AHEAD)

    def _disarm(self, timer_ids: list[str]) -> None:
        """Forget these timers (their heap entries are skipped when reached)."""
        for tid in timer_ids:
            handle = self._armed.pop(tid, None)
            self._held.pop(tid, None)
            if handle is not None:
                handle.cancel()

    def _schedule_tick(self, delay: float) -> None:
        """Run the start tick in ``delay`` seconds unless one is due sooner."""
        at = self._loop.time() + max(0.0, delay)
        if self._tick is not None:
            if self._tick_at <= at:
                return
            self._tick.cancel()
        self._tick_at = at
        self._tick = self._loop.call_at(at, self._start_due)

    def _start_due(self) -> None:
        """Commit, in one batch, every held timer due within ``START_AHEAD``; then tick again while any wait."""
        self._tick = None
        horizon = self.clock() + timedelta(seconds=START_AHEAD)
        batch: list[Timer] = []
        heap = self._unstarted
        while heap and heap[0][0] <= horizon:
            _, tid, timer = heapq.heappop(heap)
            if self._held.get(tid) is timer:  # not dropped or replaced meanwhile
                batch.append(timer)
        if batch:
            self._commit(batch)  # queued behind any batch still in flight: one committer thread, in order
        if heap:
            self._schedule_tick(max(START_EVERY, (heap[0][0] - horizon).total_seconds()))

    def _commit(self, batch: list[Timer]) -> None:
        """Send ``batch`` to the store on the committer thread (the loop never waits for it)."""
        future = self._loop.run_in_executor(self._committer, self.starter, batch)
        self._committing.add(future)
        future.add_done_callback(lambda done: self._committed(batch, done))

    def _committed(self, batch: list[Timer], done: asyncio.Future[list[str]]) -> None:
        self._committing.discard(done)
        try:
            started_ids = set(done.result())
        except Exception as exc:
            # The store did not answer: nothing was started. Try again shortly; the timers fire late, not never.
            log.error("could not commit %d starts, retrying: %s", len(batch), exc, extra={"event": "start_failed"})
            for timer in batch:
                heapq.heappush(self._unstarted, (timer.due_at, timer.timer_id, timer))
            self._schedule_tick(START_RETRY)
            return
        now = self.clock()
        started: list[Timer] = []
        refused: list[str] = []
        for timer in batch:
            tid = timer.timer_id
            if self._held.get(tid) is not timer:
                continue  # dropped or replaced while its commit was in flight
            if tid in started_ids:
                started.append(timer)
                delay = (timer.due_at - now).total_seconds()
                self._armed[tid] = self._loop.call_later(delay if delay > 0 else 0, self._fire, timer)
            else:
                refused.append(tid)
                del self._held[tid]
        if refused or self.report_starts:
            self.report(Committed(started, refused))

    def _fire(self, timer: Timer) -> None:
        early = (timer.due_at - self.clock()).total_seconds()
        if early > 0:  # woken just before the instant: wait out the rest
            self._armed[timer.timer_id] = self._loop.call_later(early, self._fire, timer)
            return
        self._armed.pop(timer.timer_id, None)
        self._held.pop(timer.timer_id, None)
        self._posting.add(timer.timer_id)
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
        outcome = decide(timer, attempt, result, self.clock(), self.retry, self.rand(), fired_at)
        _count(result, outcome.status)
        # Marked unrecorded before it is reported, so a retry claimed once it is recorded can fire.
        self._posting.discard(timer.timer_id)
        self._unrecorded.add(timer.timer_id)
        self.report(Fired(timer, outcome, result, fired_at))

    async def _take_unstarted(self) -> list[str]:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._committing:
            # Let the commits in flight land first: the ids they start are handed back too (as Scheduled).
            await asyncio.wait(list(self._committing))
        ids = list(self._held)
        self._disarm(ids)
        self._unstarted = []
        return ids

    async def _shutdown(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await self.deliverer.aclose()
        self._committer.shutdown(wait=False)


_FIRED = {True: metrics.FIRED.labels(result="ok"), False: metrics.FIRED.labels(result="error")}
_ENDED = {Status.FINISHED: metrics.FINISHED, Status.FAILED: metrics.FAILED}


def _count(result: Attempt, status: Status) -> None:
    """Record one attempt in the Prometheus metrics."""
    metrics.DELIVERY.observe(result.duration)
    _FIRED[result.ok].inc()
    _ENDED.get(status, metrics.RETRIED).inc()

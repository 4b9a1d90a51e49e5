"""Stores: the ``Store`` protocol callers see, and ``StoreBase``, the logic every backend shares.

The shape of dramatiq's ``ResultBackend`` and huey's ``BaseStorage``: a rule written once here, over a few
primitive operations each backend implements as one statement or one transaction (``_get``,
``_insert_new``, ``_swap``, ``_claim``, ``_complete``, ...). A change a person asks for — cancel today,
update, retry or pause later — is a pure function of the model applied through ``modify``: read, apply,
compare-and-set, start over on a lost race. The runners' hot paths (``claim_due``, ``renew``, ``complete``)
stay single statements in each backend.

Everything a store must guarantee is pinned down by ``tests/test_store_contract.py``, which runs against
each backend. Leases are what make several runners safe: ``claim_due`` leases timers to a runner
(``lease_owner``/``lease_until``) in one atomic step without changing their status, ``start`` commits
the runner to POSTing the revision it holds (the timer turns Running) and every later write names the
owner, so a runner whose lease was taken over cannot overwrite the new owner's outcome, and a timer a
person cancelled or changed in the meantime is never started with what the runner held.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from timerctl.attempts import Delivery, Outcome
from timerctl.changes import cancel, failure_callback
from timerctl.model import BackendUnavailable, Conflict, NotFound, Status, Timer
from timerctl.stores.rows import Decoded, status_of

log = logging.getLogger(__name__)

#: A pure rule of the model: the timer after the change, or the domain error that refuses it.
Change = Callable[[Timer], Timer]
#: The statuses an Outcome may record (Running → Finished, Failed, or Retrying).
OUTCOME_STATUSES = frozenset({Status.FINISHED, Status.FAILED, Status.RETRYING})
#: Lost races ``modify`` starts over from before it gives up. Each one means another writer changed the
#: timer in between, so some writer always progresses; the bound stops a swap that can never match.
MAX_RACES = 100

K = TypeVar("K")


class Store(Protocol):
    """Durable timers. Methods are safe to call from several processes on the same backing store."""

    def insert(self, timer: Timer) -> tuple[Timer, bool]:
        """``(timer as stored, True)`` when the id was absent, else ``(the existing timer, False)``: first write wins.

        Atomic: of any number of concurrent inserts of one id, from any process, exactly one is told new.
        """
        ...

    def insert_many(self, timers: Sequence[Timer]) -> int:
        """Insert the timers whose ids are absent, idempotently (a retried batch is safe); returns how many were new.

        Of repeats of one id within the batch the first is kept.
        """
        ...

    def get(self, timer_id: str) -> Timer | None:
        """The stored timer, or None; a corrupt row reads as Failed with the corruption in ``last_error``."""
        ...

    def find(
        self,
        status: Status | None = None,
        limit: int = 100,
        due_before: datetime | None = None,
        ended_after: datetime | None = None,
        url_prefix: str | None = None,
    ) -> list[Timer]:
        """Up to ``limit`` timers ordered by expiry (soonest first, then id), optionally filtered."""
        ...

    def deliveries(self, timer_id: str) -> list[Delivery]:
        """The attempts kept for ``timer_id`` (the most recent ``MAX_DELIVERIES_KEPT``), oldest first."""
        ...

    def modify(self, timer_id: str, change: Change, fallback: Timer | None = None) -> Timer:
        """The timer after ``change``, written only over the state it was computed from; see ``StoreBase.modify``."""
        ...

    def cancel(self, timer_id: str, now: datetime, fallback: Timer | None = None) -> Timer:
        """Cancel a Scheduled or Retrying timer, claimed or not. NotFound when absent and no ``fallback``;
        Conflict once its POST has started or it has ended.

        ``fallback`` is a timer known to exist elsewhere (still in the queue): it is stored as Cancelled,
        a tombstone that makes the create consumed later a no-op.
        """
        ...

    def claim_due(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        """Atomically lease to ``owner`` up to ``limit`` timers, oldest due first: Scheduled or Retrying ones
        due by ``until`` that no lease holds (or whose lease expired before ``now``), and Running ones whose
        lease expired (their runner died mid-POST). Their status does not change."""
        ...

    def start(self, owner: str, timers: Sequence[Timer]) -> list[str]:
        """Commit to POSTing ``timers`` (as claimed): each still leased to ``owner`` at the revision held turns
        Running; returns the ids started. One not started was cancelled, changed or taken over: drop it."""
        ...

    def renew(self, owner: str, lease_until: datetime, ending_before: datetime | None = None) -> set[str]:
        """Extend to ``lease_until`` the leases ``owner`` holds that end before ``ending_before`` (all when
        None) in one update, not one per timer; the ids renewed.

        A held timer whose lease ended before ``ending_before`` and is missing was lost (taken over,
        cancelled or changed); an id the caller does not know is one it holds without knowing (a claim
        whose reply was lost): release it, or its lease is extended for as long as the caller renews.
        """
        ...

    def release(self, owner: str, timer_ids: Sequence[str]) -> int:
        """Drop ``owner``'s leases on these unfinished timers (a started one goes back to Scheduled or
        Retrying); returns how many were released."""
        ...

    def complete(self, owner: str, outcomes: Sequence[Outcome]) -> list[str]:
        """Record delivery outcomes for timers ``owner`` still leases; returns the ids recorded.

        What is stored is ``outcome.apply(timer)``, with the outcome's delivery added to the timer's
        history; a timer ending Failed with a failure callback gets its callback timer stored too.
        ValueError, writing nothing, for an outcome whose status is not Finished, Failed or Retrying.
        """
        ...

    def purge(self, statuses: Sequence[Status], ended_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` timers in ``statuses`` that ended before ``ended_before``; how many."""
        ...

    def purgeable(self, statuses: Sequence[Status], ended_before: datetime) -> int:
        """How many timers ``purge`` would delete without a limit."""
        ...

    def counts(self) -> dict[Status, int]:
        """How many timers are in each status (a stored status no Timer has counts as Failed)."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable when the store cannot be reached."""
        ...

    def close(self) -> None: ...


class StoreBase(ABC):
    """The shared half of every backend: rules and argument checks, over the primitives below."""

    # --- written once ---------------------------------------------------------------------------------

    def insert(self, timer: Timer) -> tuple[Timer, bool]:
        for _ in range(MAX_RACES):
            new = self._insert_new(timer)
            found = self._get(timer.timer_id)
            if found is not None:
                return found[0], new
            # The ended timer holding the id was purged between the two: the id is free, insert again.
        raise BackendUnavailable(f"timer {timer.timer_id} was stored but cannot be read back")

    def insert_many(self, timers: Sequence[Timer]) -> int:
        # Dropped here, not left to the backend: an unordered bulk insert may apply a batch in any order.
        first: dict[str, Timer] = {}
        for timer in timers:
            first.setdefault(timer.timer_id, timer)
        return self._insert_many(list(first.values())) if first else 0

    def get(self, timer_id: str) -> Timer | None:
        found = self._get(timer_id)
        return found[0] if found is not None else None

    def find(
        self,
        status: Status | None = None,
        limit: int = 100,
        due_before: datetime | None = None,
        ended_after: datetime | None = None,
        url_prefix: str | None = None,
    ) -> list[Timer]:
        if limit <= 0:
            return []  # SQLite reads a negative LIMIT, and pymongo a limit of 0, as "no limit"
        return self._find(Filter(status, due_before, ended_after, url_prefix or None), limit)

    def modify(self, timer_id: str, change: Change, fallback: Timer | None = None) -> Timer:
        """The timer after ``change``, written only over the state it was computed from.

        Reads the timer, applies ``change`` (a pure rule of the model, which raises the domain error that
        refuses it) and writes the result with a compare-and-set. When another writer changed the timer in
        between, it starts over from what that writer left: no write is lost and no rule is applied to a
        stale state. When the id is absent, NotFound; or, given ``fallback`` (a timer known to exist
        elsewhere, such as a create still queued), ``change(fallback)`` is stored if the id is still
        absent. A corrupt row is never written over (its undecodable fields would become placeholders):
        Conflict, unless ``change`` refuses first or changes nothing.
        """
        if fallback is not None and fallback.timer_id != timer_id:
            raise ValueError(f"fallback is timer {fallback.timer_id}, not {timer_id}")
        for _ in range(MAX_RACES):
            found = self._get(timer_id)
            if found is None:
                if fallback is None:
                    raise NotFound(timer_id)
                new = _changed(change, fallback)
                if self._insert_new(new):
                    return new
                continue  # the timer was stored meanwhile: change that one instead
            current, corruption = found
            new = _changed(change, current)
            if new == current:
                return current
            if corruption is not None:
                raise Conflict(f"timer {timer_id} is stored corrupt ({corruption}); it can be read but not changed")
            if self._swap(current, new):
                return new
        raise Conflict(f"timer {timer_id} changed {MAX_RACES} times while being modified; try again")

    def cancel(self, timer_id: str, now: datetime, fallback: Timer | None = None) -> Timer:
        return self.modify(timer_id, lambda timer: cancel(timer, now), fallback)

    def claim_due(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        return self._claim(owner, now, until, lease_until, limit) if limit > 0 else []

    def start(self, owner: str, timers: Sequence[Timer]) -> list[str]:
        return self._start(owner, timers) if timers else []

    def release(self, owner: str, timer_ids: Sequence[str]) -> int:
        return self._release(owner, timer_ids) if timer_ids else 0

    def complete(self, owner: str, outcomes: Sequence[Outcome]) -> list[str]:
        for outcome in outcomes:
            if outcome.status not in OUTCOME_STATUSES:
                accepted = ", ".join(sorted(s.value for s in OUTCOME_STATUSES))
                raise ValueError(f"outcome of {outcome.timer_id} is {outcome.status.value}; expected {accepted}")
        if not outcomes:
            return []
        recorded = self._complete(owner, outcomes)
        callbacks = [o for o in outcomes if o.on_failure_url is not None and o.status is Status.FAILED]
        if callbacks:
            self._spawn_callbacks(callbacks)
        return recorded

    def _spawn_callbacks(self, outcomes: Sequence[Outcome]) -> None:
        """Store the failure callback of each Failed outcome the store holds (rare: read back one by one).

        A separate write after the outcome's: a runner dying between the two loses the callback, never
        doubles it (its id is derived from the failure, and inserts are first-write-wins). An outcome this
        call did not record is looked at too: written by an earlier call whose answer was lost, it is retried
        by the runner, and its callback is stored now (once, whichever call gets there).
        """
        spawned: list[Timer] = []
        for outcome in outcomes:
            timer = self.get(outcome.timer_id)
            if timer is None or timer.status is not Status.FAILED or timer.attempts != outcome.attempts:
                continue
            callback = failure_callback(timer, self.deliveries(timer.timer_id), outcome.ended_at or timer.due_at)
            if callback is not None:
                spawned.append(callback)
        if spawned:
            self.insert_many(spawned)

    def deliveries(self, timer_id: str) -> list[Delivery]:
        return self._deliveries(timer_id)

    def purge(self, statuses: Sequence[Status], ended_before: datetime, limit: int) -> int:
        return self._purge(_final(statuses), ended_before, limit) if limit > 0 and statuses else 0

    def purgeable(self, statuses: Sequence[Status], ended_before: datetime) -> int:
        return self._purgeable(_final(statuses), ended_before) if statuses else 0

    def counts(self) -> dict[Status, int]:
        counted = dict.fromkeys(Status, 0)
        for stored, n in self._count_statuses():
            counted[status_of(stored)] += n  # a status no Timer has reads, and counts, as Failed
        return counted

    def _keep_sound(self, claimed: Iterable[tuple[K, Decoded]], fail: Callable[[K, Timer], object]) -> list[Timer]:
        """The sound timers of a claim, soonest due first; each corrupt one is written Failed through ``fail``.

        ``claimed`` pairs each claimed row's key (whatever ``fail`` finds it by: the id may be what is
        corrupt) with its decoding. A backend calls this inside its claim, so a corrupt row is failed before
        the next one is taken: a runner must never get it, now or after a restart.
        """
        sound: list[Timer] = []
        for key, (timer, corruption) in claimed:
            if corruption is None:
                sound.append(timer)
                continue
            fail(key, timer)  # timer is the Failed reading, its last_error naming the corruption
            log.warning("timer %s marked Failed: %s", timer.timer_id, timer.last_error)
        return sorted(sound, key=_due_order)

    # --- primitives: one statement or transaction each, per backend ---------------------------------------

    @abstractmethod
    def _get(self, timer_id: str) -> Decoded | None:
        """The stored timer and None, or a corrupt row's Failed reading and what is corrupt; None when absent."""

    @abstractmethod
    def _insert_new(self, timer: Timer) -> bool:
        """Store ``timer`` if its id is absent; True when it was (atomic: one of racing inserts wins)."""

    @abstractmethod
    def _swap(self, old: Timer, new: Timer) -> bool:
        """Write the fields ``new`` changes (``rows.changed_fields``) only while the stored row still has
        ``old``'s state, in one atomic statement; True when written.

        The state compared is every field a writer moves: status, lease owner and until, attempts, due and
        revision.
        The other fields are set wholesale by whatever changes them, so a race on those alone resolves as
        the last writer's, as if the two writes had not overlapped. Fields left alike are not rewritten.
        """

    @abstractmethod
    def _insert_many(self, timers: Sequence[Timer]) -> int:
        """Insert the (distinct, at least one) timers whose ids are absent; how many were new."""

    @abstractmethod
    def _find(self, where: Filter, limit: int) -> list[Timer]:
        """``find`` with ``limit`` at least 1."""

    @abstractmethod
    def _claim(self, owner: str, now: datetime, until: datetime, lease_until: datetime, limit: int) -> list[Timer]:
        """``claim_due`` with ``limit`` at least 1, its rows passed through ``_keep_sound``."""

    @abstractmethod
    def _start(self, owner: str, timers: Sequence[Timer]) -> list[str]:
        """``start`` of at least one timer: one statement (or bulk write) for the batch."""

    @abstractmethod
    def renew(self, owner: str, lease_until: datetime, ending_before: datetime | None = None) -> set[str]:
        """See ``Store.renew``: one update per owner, served by an index on the lease owner."""

    @abstractmethod
    def _release(self, owner: str, timer_ids: Sequence[str]) -> int:
        """``release`` of at least one id."""

    @abstractmethod
    def _complete(self, owner: str, outcomes: Sequence[Outcome]) -> list[str]:
        """``complete`` of at least one outcome, each in ``OUTCOME_STATUSES``."""

    @abstractmethod
    def _deliveries(self, timer_id: str) -> list[Delivery]:
        """See ``Store.deliveries``."""

    @abstractmethod
    def _purge(self, statuses: Sequence[Status], ended_before: datetime, limit: int) -> int:
        """``purge`` of final ``statuses`` with ``limit`` at least 1, the timers' deliveries with them."""

    @abstractmethod
    def _purgeable(self, statuses: Sequence[Status], ended_before: datetime) -> int:
        """See ``Store.purgeable``."""

    @abstractmethod
    def _count_statuses(self) -> Iterable[tuple[Any, int]]:
        """Each stored status value, as stored, with how many timers have it."""

    @abstractmethod
    def ping(self) -> None:
        """Raise BackendUnavailable when the store cannot be reached."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Filter:
    """What ``find`` selects: each criterion given narrows it (``url_prefix`` matches the URL's start)."""

    status: Status | None = None
    due_before: datetime | None = None
    ended_after: datetime | None = None
    url_prefix: str | None = None


def _final(statuses: Sequence[Status]) -> list[Status]:
    """``statuses`` when all are final; ValueError otherwise (a pending timer is never purged)."""
    for status in statuses:
        if not status.is_final:
            raise ValueError(f"only ended timers can be purged, not {status.value} ones")
    return list(dict.fromkeys(statuses))


def _changed(change: Change, timer: Timer) -> Timer:
    new = change(timer)
    if new.timer_id != timer.timer_id:
        raise ValueError(f"a change may not rename timer {timer.timer_id} to {new.timer_id}")
    return new


def _due_order(timer: Timer) -> tuple[datetime, str]:
    return timer.due_at, timer.timer_id

"""Delivery slots shared fairly between webhook hosts, so hosts that hang cannot starve the others.

Event-loop only (no locks): ``HostSlots`` is used from the runner's firing loop.
"""

from __future__ import annotations

import asyncio
from collections import deque

#: A host's window (requests in flight) before it has answered anything.
INITIAL_WINDOW = 4
#: Hosts remembered before idle ones are forgotten.
MAX_HOSTS = 4096


class HostShare:
    """One host's share: its window, its requests in flight, its POSTs waiting for a slot (oldest first)."""

    __slots__ = ("in_flight", "waiting", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0
        self.waiting: deque[asyncio.Future[None]] = deque()


class HostSlots:
    """Delivery slots shared fairly between hosts: a window per host (AIMD) under one overall limit.

    With fixed limits, hosts that never answer held every overall slot (ten at 32 each filled 256) and
    other hosts' POSTs queued for a whole request timeout. Here a host's window starts at ``initial``,
    grows by one per answered request up to ``per_host`` and halves on each timeout or connection failure,
    down to 1 (one probe in flight, so a host that recovers is noticed). A POST waits for its host's
    window; when the overall limit holds it, a freed slot goes to the waiting host with the fewest requests
    in flight, and the last eighth of the slots is kept for hosts with none in flight, so a healthy host
    is not queued behind hanging ones even when their windows add up to more than the limit. Within a
    host, POSTs start in the order they asked.
    """

    def __init__(self, total: int, per_host: int, initial: int = INITIAL_WINDOW) -> None:
        self.total = max(1, total)
        self.per_host = max(1, per_host)
        self.initial = max(1, min(initial, self.per_host))
        self.in_flight = 0
        self._shared = self.total - self.total // 8  # what hosts with requests in flight may fill
        self._hosts: dict[str, HostShare] = {}
        self._ready: set[HostShare] = set()  # hosts with POSTs waiting

    def window(self, host: str) -> int:
        """How many requests ``host`` may have in flight now."""
        found = self._hosts.get(host)
        return self.initial if found is None else found.window

    async def acquire(self, host: str) -> HostShare:
        """Wait for a slot for ``host``; hand what this returns to ``release``."""
        entry = self._hosts.get(host)
        if entry is None:
            if len(self._hosts) >= MAX_HOSTS:
                self._forget_idle()
            entry = self._hosts[host] = HostShare(self.initial)
        if not entry.waiting and self._may_start(entry):
            entry.in_flight += 1
            self.in_flight += 1
            return entry
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.waiting.append(waiter)
        self._ready.add(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(entry, None)  # granted just as it was cancelled: hand the slot on
            else:
                if waiter in entry.waiting:
                    entry.waiting.remove(waiter)
                if not entry.waiting:
                    self._ready.discard(entry)
            raise
        return entry

    def release(self, entry: HostShare, answered: bool | None) -> None:
        """Give a slot back: ``answered`` True grows the host's window, False (timed out, unreachable) halves it."""
        entry.in_flight -= 1
        self.in_flight -= 1
        if answered:
            entry.window = min(self.per_host, entry.window + 1)
        elif answered is False:
            entry.window = max(1, entry.window // 2)
        if self._ready:
            self._grant()

    def _may_start(self, entry: HostShare) -> bool:
        limit = self._shared if entry.in_flight else self.total
        return entry.in_flight < entry.window and self.in_flight < limit

    def _grant(self) -> None:
        """Start waiting POSTs while slots are free, least-busy host first."""
        while self.in_flight < self.total:
            best: HostShare | None = None
            for entry in self._ready:
                if self._may_start(entry) and (best is None or entry.in_flight < best.in_flight):
                    best = entry
            if best is None:
                return
            waiter = best.waiting.popleft()
            if not best.waiting:
                self._ready.discard(best)
            if not waiter.done():
                best.in_flight += 1
                self.in_flight += 1
                waiter.set_result(None)

    def _forget_idle(self) -> None:
        """Drop hosts with nothing in flight or waiting; their windows start again at ``initial``."""
        for host in [name for name, entry in self._hosts.items() if not entry.in_flight and not entry.waiting]:
            del self._hosts[host]

"""What a delivery attempt is and what comes of it — pure, like the model: the retry policy deciding when to
try again, the ``Delivery`` record a store keeps of each attempt, and the ``Outcome`` a runner writes back.

Apart from ``model.py`` (a timer and its rules) because these are the runner's side of a timer's life.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from timerctl.model import Status, Timer, format_instant, parse_instant


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed delivery again: exponential backoff with jitter, capped."""

    max_attempts: int = 8
    first_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(minutes=5)

    def next_delay(self, attempts: int, rand: float) -> timedelta | None:
        """How long to wait before the next attempt after ``attempts`` tries, or None when exhausted.

        ``rand`` in [0, 1) is the caller's random draw (the core reads no randomness itself). The delay is
        half fixed, half jittered so retries never bunch up yet never come sooner than half the backoff.
        """
        if attempts >= self.max_attempts:
            return None
        doublings = min(max(0, attempts - 1), 64)  # past 2**64 the cap has long been reached
        base = min(self.max_delay.total_seconds(), self.first_delay.total_seconds() * 2.0**doublings)
        return timedelta(seconds=base / 2 + base / 2 * rand)


#: Attempts a store keeps per timer (older ones are counted in ``delivery_count``, not kept).
MAX_DELIVERIES_KEPT = 20
#: Characters of a response body kept on a Delivery.
RESPONSE_KEPT = 256


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt as recorded: when it started, how long it took, what came back (secrets stripped)."""

    attempt: int
    at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    response: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": format_instant(self.at),
            "durationMs": self.duration_ms,
            "statusCode": self.status_code,
            "error": self.error,
            "response": self.response,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        return cls(
            attempt=data["attempt"],
            at=parse_instant(data["at"]),
            duration_ms=data["durationMs"],
            status_code=data.get("statusCode"),
            error=data.get("error"),
            response=data.get("response"),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one started timer, written back by its runner with the attempt's ``delivery``.

    ``status`` is Finished (delivered), Failed (gave up) or Retrying (next attempt at ``due_at``).
    """

    timer_id: str
    status: Status
    attempts: int
    fired_at: datetime | None = None
    last_error: str | None = None
    due_at: datetime | None = None
    ended_at: datetime | None = None
    delivery: Delivery | None = None
    #: The timer's failure callback, when this outcome ends it Failed (the store spawns the callback).
    on_failure_url: str | None = None
    #: The timer's ``delivery_count`` with this attempt: its number in the whole history. Known to the runner
    #: from its claim (nobody else writes a leased timer's deliveries), so the store need not read it back.
    delivery_count: int | None = None

    def apply(self, timer: Timer) -> Timer:
        """``timer`` as the store has it once this outcome is recorded (the lease is gone)."""
        return timer.move(
            self.status,
            attempts=self.attempts,
            fired_at=self.fired_at,
            last_error=self.last_error,
            due_at=self.due_at or timer.due_at,
            lease_owner=None,
            lease_until=None,
            ended_at=self.ended_at,
            delivery_count=(
                self.delivery_count
                if self.delivery_count is not None
                else timer.delivery_count + (self.delivery is not None)
            ),
        )

"""The OpenAPI documentation of the HTTP API's bodies: the pydantic models of its requests and replies.

Only the schema is derived from them. ``timerctl.spec`` validates the bodies (the same rules and messages as
the CLI) and the handlers in ``timerctl.api`` build the replies, so these models change only with what the
document says, never with how a request is handled; kept apart, they leave ``api`` to the routes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TimerRequest(BaseModel):
    """A timer to create: ``webhookUrl`` and one time form (hours/minutes/seconds, ``in`` or ``expiryTime``)."""

    model_config = ConfigDict(extra="forbid")
    webhookUrl: str = Field(description="Absolute http(s) URL to POST to (alias: url).")
    hours: int | None = Field(None, ge=0, description="Old-service form: hours >= 0.")
    minutes: int | None = Field(None, ge=0, le=59, description="Old-service form: 0-59.")
    seconds: int | None = Field(None, ge=0, le=59, description="Old-service form: 0-59.")
    in_: str | None = Field(None, alias="in", description="A delay such as 90s, 15m, 1h30m.")
    expiryTime: str | None = Field(None, description="ISO-8601 instant (alias: at); naive means server-local.")
    payload: Any = Field(None, description="Any JSON value up to 64 KiB, sent in the webhook body.")
    timerId: str | None = Field(None, description="Your id (alias: id); makes the create idempotent.")
    onFailureUrl: str | None = Field(None, description="URL told once, by a signed POST, if the timer ends Failed.")


class UpdateRequest(BaseModel):
    """What to change of a Scheduled or Retrying timer: any of a create's fields; a field left out is kept."""

    model_config = ConfigDict(extra="forbid")
    webhookUrl: str | None = Field(None, description="A new absolute http(s) URL (alias: url).")
    hours: int | None = Field(None, ge=0, description="A new delay from now, old-service form: hours >= 0.")
    minutes: int | None = Field(None, ge=0, le=59, description="Old-service form: 0-59.")
    seconds: int | None = Field(None, ge=0, le=59, description="Old-service form: 0-59.")
    in_: str | None = Field(None, alias="in", description="A new delay from now, such as 90s or 15m.")
    expiryTime: str | None = Field(None, description="A new ISO-8601 instant (alias: at).")
    payload: Any = Field(None, description="A new JSON body; null for none.")
    onFailureUrl: str | None = Field(None, description="A new failure callback URL; null removes it.")
    timerId: str | None = Field(None, description="The timer's id (alias: id), if repeated: it cannot change.")


class RetryRequest(BaseModel):
    """When the retried timer is due: now when the body is empty."""

    model_config = ConfigDict(extra="forbid")
    in_: str | None = Field(None, alias="in", description="Due after this delay, such as 10m.")
    at: str | None = Field(None, description="Due at this ISO-8601 instant.")


class TimerOut(BaseModel):
    timerId: str
    timeLeft: int = Field(description="Whole seconds until the next attempt is due, rounded up; 0 once due or done.")
    timerStatus: str = Field(description="Scheduled, Running, Retrying, Finished, Failed or Cancelled.")


class TimerResponse(BaseModel):
    code: int
    message: str
    timer: TimerOut


class DeliveryOut(BaseModel):
    """One attempt: when it started, how long it took, and what came back."""

    attempt: int
    at: str = Field(description="When the attempt started (UTC, milliseconds).")
    durationMs: int
    statusCode: int | None = Field(description="The receiver's HTTP status; null when none came back.")
    error: str | None = Field(description="Why the attempt failed, on one line, secrets stripped; null on a 2xx.")
    response: str | None = Field(description="The first few hundred characters of the response body.")


class TimerDetail(TimerOut):
    """Every field of the timer (as ``timerctl get ID --json``), with its deliveries."""

    webhookUrl: str
    expiryTime: str
    createdAt: str
    payload: Any
    attempts: int = Field(description="Attempts since it was created or last retried by hand.")
    firedAt: str | None
    lastError: str | None
    nextAttemptAt: str | None = Field(description="When the next attempt is due, while Scheduled or Retrying.")
    endedAt: str | None = Field(description="When it became Finished, Failed or Cancelled.")
    deliveryCount: int = Field(description="Every attempt ever made.")
    onFailureUrl: str | None
    deliveries: list[DeliveryOut] = Field(description="The most recent attempts (at most 20), oldest first.")
    deliveriesOmitted: int = Field(description="Older attempts made but no longer kept: deliveryCount - kept.")


class TimerDetailResponse(BaseModel):
    code: int
    message: str
    timer: TimerDetail


class ErrorResponse(BaseModel):
    code: int
    message: str

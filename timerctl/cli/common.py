"""What every command shares: settings, the service, one-line errors with exit codes, and output."""

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

from timerctl.config import Settings, load_settings
from timerctl.model import Timer, TimerError, format_instant
from timerctl.service import TimerService
from timerctl.timeparse import format_duration

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_CONFLICT = 0, 1, 2, 3, 4


@functools.cache
def out() -> "Console":
    """The console for people-facing output on stdout, made on first use (rich is slow to import)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


STATUS_STYLE = {
    "Scheduled": "cyan",
    "Running": "yellow",
    "Finished": "green",
    "Failed": "red",
    "Cancelled": "dim",
}


def warn(message: str) -> None:
    """One plain line on stderr (never on stdout, which scripts parse)."""
    typer.echo(message if message.startswith("warning") else f"warning: {message}", err=True)


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def errors_to_exit_codes(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn domain errors into ``error: <reason>`` on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TimerError as exc:
            raise fail(str(exc), exc.exit_code) from None

    return wrapper


def settings_from_env() -> Settings:
    try:
        return load_settings()
    except TimerError as exc:
        raise fail(str(exc), exc.exit_code) from None


@contextmanager
def service() -> Iterator[TimerService]:
    """A TimerService on the configured backends, closed when the command ends."""
    svc = TimerService(settings_from_env(), warn=warn)
    try:
        yield svc
    finally:
        svc.close()


def now() -> datetime:
    return datetime.now(UTC)


def print_json(value: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def timer_table(timer: Timer, at: datetime) -> "Table":
    """One timer as a two-column table for people."""
    from rich.table import Table

    data = timer.to_json(at)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("timerId", data["timerId"])
    table.add_row("status", status_text(data["timerStatus"]))
    table.add_row("webhookUrl", data["webhookUrl"])
    table.add_row("expiryTime", data["expiryTime"])
    table.add_row("timeLeft", f"{format_duration(data['timeLeft'])} ({data['timeLeft']}s)")
    table.add_row("createdAt", data["createdAt"])
    table.add_row("attempts", str(data["attempts"]))
    if data["firedAt"]:
        table.add_row("firedAt", data["firedAt"])
    if data["lastError"]:
        table.add_row("lastError", f"[red]{data['lastError']}[/]")
    if data["payload"] is not None:
        table.add_row("payload", json.dumps(data["payload"], ensure_ascii=False)[:200])
    return table


def timers_table(timers: list[Timer], at: datetime) -> "Table":
    """Many timers as a table sorted as given (the store sorts by expiry)."""
    from rich.table import Table

    table = Table(title=f"{len(timers)} timer(s)")
    for name in ("timerId", "status", "expiryTime", "timeLeft", "attempts", "webhookUrl"):
        table.add_column(name, overflow="fold")
    for timer in timers:
        table.add_row(
            timer.timer_id,
            status_text(timer.status.value),
            format_instant(timer.expiry_time),
            format_duration(timer.time_left(at)),
            str(timer.attempts),
            timer.webhook_url,
        )
    return table

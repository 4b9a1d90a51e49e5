"""Live views: ``watch`` one timer until it is done, and ``stats`` over the whole store."""

import time
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

from timerctl.cli.common import (
    errors_to_exit_codes,
    now,
    out,
    plain,
    print_json,
    service,
    status_text,
    timer_table,
    timers_table,
)
from timerctl.model import PENDING_STATUSES, Status, Timer
from timerctl.service import TimerService
from timerctl.timeparse import format_duration

#: ``watch`` exit codes by final status (documented in the README).
WATCH_EXIT = {Status.FINISHED: 0, Status.FAILED: 5, Status.CANCELLED: 6}


@errors_to_exit_codes
def watch(
    timer_id: Annotated[str, typer.Argument(help="The timer's id.", metavar="ID")],
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between refreshes.")] = 0.25,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the final timer as JSON.")] = False,
) -> None:
    """Show a live countdown and the delivery outcome; exit 0 Finished, 5 Failed, 6 Cancelled."""
    with service() as svc:
        if as_json:
            timer = svc.get(timer_id)
            while not timer.status.is_final:
                time.sleep(interval)
                timer = svc.get(timer_id)
            print_json(timer.to_json(now()))
        else:
            from rich.live import Live

            timer = svc.get(timer_id)
            with Live(_countdown(timer), console=out(), auto_refresh=False) as live:
                while not timer.status.is_final:
                    time.sleep(interval)
                    timer = svc.get(timer_id)
                    live.update(_countdown(timer), refresh=True)
                live.update(timer_table(timer, now()), refresh=True)
    raise typer.Exit(WATCH_EXIT[timer.status])


#: What the countdown line says of a timer in each status that is not final.
_WAITING = {Status.SCHEDULED: "fires in", Status.RETRYING: "next attempt in", Status.RUNNING: "POST"}


def _countdown(timer: Timer) -> "Table":
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_row("timer", timer.timer_id)
    table.add_row("status", status_text(timer.status.value))
    if timer.status is Status.RUNNING:
        table.add_row(_WAITING[timer.status], "in flight")
    elif timer.status.is_pending:
        left = timer.time_left(now())
        table.add_row(_WAITING[timer.status], format_duration(left) if left > 0 else "due now")
    table.add_row("attempts", str(timer.attempts))
    if timer.last_error:
        table.add_row("last error", f"[red]{plain(timer.last_error)}[/]")
    return table


@errors_to_exit_codes
def stats(
    upcoming: Annotated[int, typer.Option("--next", min=0, max=1000, help="How many next-due timers to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
) -> None:
    """Counts by status and the next timers due (Scheduled, or Retrying: due again)."""
    with service() as svc:
        counts = svc.counts()
        soon = _next_due(svc, upcoming)
    at = now()
    if as_json:
        print_json({"counts": {s.value: n for s, n in counts.items()}, "next": [t.to_json(at) for t in soon]})
        return
    from rich.table import Table

    table = Table(title="timers by status")
    table.add_column("status")
    table.add_column("count", justify="right")
    for status, count in counts.items():
        table.add_row(status_text(status.value), f"{count:,}")
    table.add_row("[bold]total[/]", f"[bold]{sum(counts.values()):,}[/]")
    out().print(table)
    if soon:
        out().print(timers_table(soon, at))


def _next_due(svc: TimerService, limit: int) -> list[Timer]:
    """The ``limit`` pending timers due soonest: of the Scheduled and the Retrying ones each store lists first."""
    if not limit:
        return []
    pending = [t for status in PENDING_STATUSES for t in svc.list(status=status, limit=limit)]
    return sorted(pending, key=lambda t: (t.due_at, t.timer_id))[:limit]

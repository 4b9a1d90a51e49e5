"""``doctor``: which backend each part uses, and whether each configured one answers."""

from typing import Annotated

import typer

from timerctl.cli.common import EXIT_UNAVAILABLE, out, print_json, service
from timerctl.service import health_report


def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False) -> None:
    """Check the store, queue and cache: backend, round-trip time; exit 3 when any is unreachable."""
    with service() as svc:
        parts = svc.check()
    down = [name for name, (_, _, error) in parts.items() if error]
    if as_json:
        print_json(health_report(parts))
    else:
        from rich.table import Table

        table = Table(title="timerctl doctor")
        for column in ("part", "backend", "status", "round trip"):
            table.add_column(column)
        for name, (backend, rtt, error) in parts.items():
            status = "[green]ok[/]" if error is None else f"[red]unreachable[/]: {error}"
            table.add_row(name, backend, status, f"{rtt * 1000:.1f} ms" if rtt is not None else "-")
        out().print(table)
    if down:
        raise typer.Exit(EXIT_UNAVAILABLE)

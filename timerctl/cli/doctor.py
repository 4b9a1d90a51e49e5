"""``doctor``: which backend each part uses, and whether each configured one answers."""

import stat
from pathlib import Path
from typing import Annotated

import typer

from timerctl.cli.common import EXIT_UNAVAILABLE, errors_to_exit_codes, out, print_json, service, warn
from timerctl.config import Settings
from timerctl.service import health_report


def exposed_store(settings: Settings) -> str | None:
    """Why other users can read the SQLite store file (webhook URLs, payloads), or None when they cannot.

    timerctl creates the file ``0600`` but leaves the mode of an existing one alone (its owner may have
    chosen it), so this is where an older, world-readable store is pointed out.
    """
    if settings.mongo_uri:
        return None
    path = Path(settings.db_path)
    try:
        file_mode, folder_mode = path.stat().st_mode, path.parent.stat().st_mode
    except OSError:
        return None
    readers = [
        who
        for who, can_read, can_enter in (("group", stat.S_IRGRP, stat.S_IXGRP), ("others", stat.S_IROTH, stat.S_IXOTH))
        if file_mode & can_read and folder_mode & can_enter
    ]
    if not readers:
        return None
    mode = f"{stat.S_IMODE(file_mode):04o}"
    return f"the store file {path} is readable by {' and '.join(readers)} (mode {mode}); chmod 600 {path}"


@errors_to_exit_codes
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False) -> None:
    """Check the store, queue and cache: backend, round-trip time; exit 3 when any is unreachable."""
    with service() as svc:
        parts = svc.check()
        exposure = exposed_store(svc.settings)
    if exposure:
        warn(exposure)
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

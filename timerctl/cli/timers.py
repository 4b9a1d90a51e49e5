"""``create``, ``get``, ``list`` and ``cancel``: parse, call the service, print."""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, tzinfo
from typing import Annotated, Any, BinaryIO

import typer

from timerctl.cli.common import (
    EXIT_INVALID,
    errors_to_exit_codes,
    fail,
    now,
    out,
    print_json,
    service,
    timer_table,
    timers_table,
)
from timerctl.model import MAX_PAYLOAD_TEXT_BYTES, InvalidInput, TimerSpec, parse_payload, parse_status
from timerctl.spec import build_spec, spec_from_mapping
from timerctl.timeparse import parse_duration

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


def _int_or_none(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"--{name} must be an integer, got {text!r}") from None


def _payload(text: str | None) -> Any:
    """The payload of ``--payload``: JSON text, or ``@file`` read up to the text limit (``@/dev/zero`` is refused)."""
    if text is None:
        return None
    if text.startswith("@"):
        name = text[1:]
        try:
            with open(name, "rb") as fh:
                data = fh.read(MAX_PAYLOAD_TEXT_BYTES + 1)
        except OSError as exc:
            raise InvalidInput(f"cannot read payload file {name!r}: {exc}") from None
        if len(data) > MAX_PAYLOAD_TEXT_BYTES:
            raise InvalidInput(
                f"payload file {name!r} is over {MAX_PAYLOAD_TEXT_BYTES} bytes (1 MiB); not read further"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"cannot read payload file {name!r}: {exc}") from None
    return parse_payload(text)


@errors_to_exit_codes
def create(
    url: Annotated[str | None, typer.Option("--url", help="Absolute http(s) URL to POST to.")] = None,
    delay: Annotated[str | None, typer.Option("--in", help="Delay such as 90s, 15m, 1h30m, 2d.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="ISO-8601 instant; naive means local time.")] = None,
    hours: Annotated[str | None, typer.Option("--hours", help="Old-service form: hours >= 0.")] = None,
    minutes: Annotated[str | None, typer.Option("--minutes", help="Old-service form: 0-59.")] = None,
    seconds: Annotated[str | None, typer.Option("--seconds", help="Old-service form: 0-59.")] = None,
    payload: Annotated[str | None, typer.Option("--payload", help="JSON sent in the body, or @file.json.")] = None,
    timer_id: Annotated[str | None, typer.Option("--id", help="Your id; makes the create idempotent.")] = None,
    from_file: Annotated[
        str | None, typer.Option("--from-file", help="One JSON timer spec per line ('-' for stdin).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a timer that POSTs to --url when it expires (or many, with --from-file)."""
    if from_file is not None:
        if any(v is not None for v in (url, delay, at, hours, minutes, seconds, payload, timer_id)):
            raise InvalidInput("--from-file takes every field from the file; give no other timer options")
        _create_from_file(from_file)
        return
    if url is None:
        raise InvalidInput("missing --url; give the absolute http(s) URL to POST to")
    spec = build_spec(
        url,
        _local_zone() if at is not None else UTC,
        delay=delay,
        at=at,
        hours=_int_or_none("hours", hours),
        minutes=_int_or_none("minutes", minutes),
        seconds=_int_or_none("seconds", seconds),
        payload=_payload(payload),
        timer_id=timer_id,
    )
    with service() as svc:
        timer = svc.create(spec).timer
    if as_json:
        print_json(timer.to_json(now()))
    else:
        out().print(timer_table(timer, now()))


def _local_zone() -> tzinfo:
    """The zone naive ``--at`` times are read in: $TZ, else the system's (tzlocal is slow to import)."""
    from tzlocal import get_localzone

    return get_localzone()


#: The longest ``--from-file`` line parsed: a payload's text limit plus room for the other fields.
MAX_SPEC_LINE = MAX_PAYLOAD_TEXT_BYTES + 16 * 1024


def _lines(stream: BinaryIO, limit: int = MAX_SPEC_LINE) -> Iterator[bytes | None]:
    """The stream's lines, each read at most ``limit`` bytes at a time; None for a line over ``limit``
    (skipped to its end without being kept), so one endless line cannot exhaust memory."""
    while line := stream.readline(limit + 1):
        if len(line) <= limit:
            yield line
            continue
        while not line.endswith(b"\n") and (line := stream.readline(limit + 1)):
            pass
        yield None


def _read_specs(stream: BinaryIO) -> Iterator[tuple[int, TimerSpec | InvalidInput]]:
    # Bytes, decoded line by line: a line that is not UTF-8 is one invalid line, not a failed import.
    zone = _local_zone()
    for number, line in enumerate(_lines(stream), start=1):
        spec: TimerSpec | InvalidInput
        if line is None:
            yield number, InvalidInput(f"line is over {MAX_SPEC_LINE} bytes; not parsed")
            continue
        if not line.strip():
            continue
        try:
            spec = spec_from_mapping(json.loads(line.decode("utf-8")), zone)
        except InvalidInput as exc:
            spec = exc
        except UnicodeDecodeError as exc:
            spec = InvalidInput(f"line is not UTF-8 text: {exc.reason} at byte {exc.start}")
        except ValueError as exc:  # json.JSONDecodeError
            spec = InvalidInput(f"invalid JSON: {exc}")
        except RecursionError:
            spec = InvalidInput("invalid JSON: nested too deeply")
        yield number, spec


@contextmanager
def _progress(total: int | None, live: bool) -> Iterator[Callable[[int], None]]:
    """A callback moving a transient bar on stderr to ``n`` lines done; a no-op when stderr is no terminal.

    rich.progress is imported only for the bar: it takes ~70 ms, as long as creating 2,000 timers.
    """
    if not live:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("creating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    progress = Progress(*columns, transient=True)
    with progress:
        task = progress.add_task("create", total=total)
        yield lambda n: progress.update(task, completed=n)


#: ``json.dumps(value, ensure_ascii=False)`` without building a new encoder for every line.
_encode_line = json.JSONEncoder(ensure_ascii=False).encode


def _create_from_file(path: str) -> None:
    try:
        stream: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InvalidInput(f"cannot read {path!r}: {exc}") from None
    total = None
    live = sys.stderr.isatty()
    if path != "-" and live:
        with open(path, "rb") as fh:
            total = sum(1 for line in fh if line.strip())
    bad = 0
    try:
        with _progress(total, live) as advance, service() as svc:
            write = sys.stdout.write  # after the bar started: it may redirect stdout around itself
            at = now()
            for n, result in enumerate(svc.create_many(_read_specs(stream)), start=1):
                if result.timer is not None:
                    write(_encode_line(result.timer.to_json(at)) + "\n")
                else:
                    bad += 1
                    write(json.dumps({"line": result.line, "error": result.error}) + "\n")
                if live and n % 100 == 0:
                    advance(n)
                    at = now()
    finally:
        sys.stdout.flush()
        if path != "-":
            stream.close()
    if bad:
        raise fail(f"{bad} line(s) were invalid; the valid ones were created", EXIT_INVALID)


@errors_to_exit_codes
def get(
    timer_id: Annotated[str, typer.Argument(help="The timer's id.", metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Show one timer: status, time left, attempts and the last error."""
    with service() as svc:
        timer = svc.get(timer_id)
    if as_json:
        print_json(timer.to_json(now()))
    else:
        out().print(timer_table(timer, now()))


@errors_to_exit_codes
def list_timers(
    status: Annotated[str | None, typer.Option("--status", help="Only timers in this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="At most this many.")] = 50,
    due_within: Annotated[
        str | None, typer.Option("--due-within", help="Only timers expiring within this duration, e.g. 10m.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List timers soonest expiry first."""
    wanted = parse_status(status) if status is not None else None
    try:
        due_before = now() + parse_duration(due_within) if due_within is not None else None
    except OverflowError:
        raise InvalidInput(f"--due-within {due_within!r} reaches past the year 9999") from None
    with service() as svc:
        timers = svc.list(status=wanted, limit=limit, due_before=due_before)
    if as_json:
        print_json([t.to_json(now()) for t in timers])
    else:
        out().print(timers_table(timers, now()))


@errors_to_exit_codes
def cancel(
    timer_id: Annotated[str, typer.Argument(help="The timer's id.", metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Cancel a Scheduled timer so it never fires (exit 4 when it already ran or is running)."""
    with service() as svc:
        timer = svc.cancel(timer_id)
    if as_json:
        print_json(timer.to_json(now()))
    else:
        out().print(timer_table(timer, now()))

"""Timer commands: ``create``, ``get``, ``list``, ``cancel``, and the changes after a create: ``update``,
``fire``, ``retry``, ``purge``. Each parses, calls the service and prints."""

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from typing import Annotated, BinaryIO

import typer

from timerctl.changes import KEEP
from timerctl.cli.common import (
    EXIT_INVALID,
    JsonFlag,
    TimerId,
    deliveries_table,
    errors_to_exit_codes,
    fail,
    int_or_none,
    now,
    out,
    payload_option,
    print_json,
    progress,
    service,
    timer_table,
    timers_table,
)
from timerctl.model import (
    FINAL_STATUSES,
    MAX_PAYLOAD_TEXT_BYTES,
    InvalidInput,
    Status,
    Timer,
    TimerError,
    TimerSpec,
    format_instant,
    parse_status,
)
from timerctl.spec import build_spec, build_update, detail_json, retry_instant, spec_from_mapping
from timerctl.timeparse import parse_duration

# The options of a timer's time, URL and payload: the same for create and update.
Delay = Annotated[str | None, typer.Option("--in", help="Delay such as 90s, 15m, 1h30m, 2d.")]
At = Annotated[str | None, typer.Option("--at", help="ISO-8601 instant; naive means local time.")]
Hours = Annotated[str | None, typer.Option("--hours", help="Old-service form: hours >= 0.")]
Minutes = Annotated[str | None, typer.Option("--minutes", help="Old-service form: 0-59.")]
Seconds = Annotated[str | None, typer.Option("--seconds", help="Old-service form: 0-59.")]
Payload = Annotated[str | None, typer.Option("--payload", help="JSON sent in the body, or @file.json.")]
OnFailure = Annotated[
    str | None, typer.Option("--on-failure", help="URL told once, by a signed POST, if the timer ends Failed.")
]


def _local_zone() -> tzinfo:
    """The zone naive ``--at`` times are read in: $TZ, else the system's (tzlocal is slow to import)."""
    from tzlocal import get_localzone

    return get_localzone()


def _zone(at: str | None) -> tzinfo:
    return _local_zone() if at is not None else UTC


@errors_to_exit_codes
def create(
    url: Annotated[str | None, typer.Option("--url", help="Absolute http(s) URL to POST to.")] = None,
    delay: Delay = None,
    at: At = None,
    hours: Hours = None,
    minutes: Minutes = None,
    seconds: Seconds = None,
    payload: Payload = None,
    timer_id: Annotated[str | None, typer.Option("--id", help="Your id; makes the create idempotent.")] = None,
    on_failure: OnFailure = None,
    from_file: Annotated[
        str | None, typer.Option("--from-file", help="One JSON timer spec per line ('-' for stdin).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a timer that POSTs to --url when it expires (or many, with --from-file)."""
    if from_file is not None:
        if any(v is not None for v in (url, delay, at, hours, minutes, seconds, payload, timer_id, on_failure)):
            raise InvalidInput("--from-file takes every field from the file; give no other timer options")
        _create_from_file(from_file)
        return
    if url is None:
        raise InvalidInput("missing --url; give the absolute http(s) URL to POST to")
    spec = build_spec(
        url,
        _zone(at),
        delay=delay,
        at=at,
        hours=int_or_none("hours", hours),
        minutes=int_or_none("minutes", minutes),
        seconds=int_or_none("seconds", seconds),
        payload=payload_option(payload) if payload is not None else None,
        timer_id=timer_id,
        on_failure_url=on_failure,
    )
    with service() as svc:
        timer = svc.create(spec).timer
    _print_timer(timer, as_json)


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
        with progress("creating", total, live) as advance, service() as svc:
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
def get(timer_id: TimerId, as_json: JsonFlag = False) -> None:
    """Show one timer: status, time left, attempts, and its deliveries (the last 20 attempts)."""
    with service() as svc:
        timer = svc.get(timer_id)
        deliveries = svc.deliveries(timer_id)
    data = detail_json(timer, deliveries, now())
    if as_json:
        print_json(data)
        return
    out().print(timer_table(timer, now()))
    if deliveries or data["deliveriesOmitted"]:
        out().print(deliveries_table(deliveries, data["deliveriesOmitted"]))


def _ago(option: str, text: str | None) -> datetime | None:
    """The instant ``text`` (a duration) before now, for ``--since``; None when not given."""
    if text is None:
        return None
    try:
        return now() - parse_duration(text)
    except OverflowError:
        raise InvalidInput(f"{option} {text!r} reaches before the year 1") from None


Since = Annotated[str | None, typer.Option("--since", help="Only timers that ended within this duration, e.g. 1h.")]
UrlPrefix = Annotated[str | None, typer.Option("--url-prefix", help="Only timers whose webhook URL starts so.")]


@errors_to_exit_codes
def list_timers(
    status: Annotated[str | None, typer.Option("--status", help="Only timers in this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="At most this many.")] = 50,
    due_within: Annotated[
        str | None, typer.Option("--due-within", help="Only timers expiring within this duration, e.g. 10m.")
    ] = None,
    since: Since = None,
    url_prefix: UrlPrefix = None,
    as_json: JsonFlag = False,
) -> None:
    """List timers soonest expiry first."""
    wanted = parse_status(status) if status is not None else None
    try:
        due_before = now() + parse_duration(due_within) if due_within is not None else None
    except OverflowError:
        raise InvalidInput(f"--due-within {due_within!r} reaches past the year 9999") from None
    ended_after = _ago("--since", since)
    with service() as svc:
        timers = svc.list(
            status=wanted, limit=limit, due_before=due_before, ended_after=ended_after, url_prefix=url_prefix
        )
    if as_json:
        print_json([t.to_json(now()) for t in timers])
    else:
        out().print(timers_table(timers, now()))


@errors_to_exit_codes
def cancel(timer_id: TimerId, as_json: JsonFlag = False) -> None:
    """Cancel a Scheduled or Retrying timer so it never fires (exit 4 once its POST started or it ended)."""
    with service() as svc:
        timer = svc.cancel(timer_id)
    _print_timer(timer, as_json)


@errors_to_exit_codes
def update(
    timer_id: TimerId,
    delay: Delay = None,
    at: At = None,
    hours: Hours = None,
    minutes: Minutes = None,
    seconds: Seconds = None,
    url: Annotated[str | None, typer.Option("--url", help="A new absolute http(s) URL to POST to.")] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", help="A new JSON body, or @file.json ('null' for none).")
    ] = None,
    on_failure: Annotated[
        str | None, typer.Option("--on-failure", help="A new URL told if the timer ends Failed ('' for none).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a Scheduled or Retrying timer in place: its time, URL, payload or failure callback (exit 4 once
    its POST started or it ended)."""
    hms = [int_or_none(name, text) for name, text in (("hours", hours), ("minutes", minutes), ("seconds", seconds))]
    body = payload_option(payload) if payload is not None else KEEP
    callback = KEEP if on_failure is None else on_failure or None
    with service() as svc:
        change = build_update(
            _zone(at),
            svc.clock(),
            svc.settings.max_horizon,
            delay=delay,
            at=at,
            hours=hms[0],
            minutes=hms[1],
            seconds=hms[2],
            url=url,
            payload=body,
            on_failure_url=callback,
        )
        timer = svc.update(timer_id, change)
    _print_timer(timer, as_json)


@errors_to_exit_codes
def fire(timer_id: TimerId, as_json: JsonFlag = False) -> None:
    """Make a Scheduled or Retrying timer due now (exit 4 once its POST started or it ended)."""
    with service() as svc:
        timer = svc.fire(timer_id)
    _print_timer(timer, as_json)


@errors_to_exit_codes
def retry(
    timer_id: Annotated[
        str | None, typer.Argument(help="The Failed timer's id (or --status Failed for many).", metavar="[ID]")
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Retry every timer in this status: only Failed is accepted.")
    ] = None,
    since: Since = None,
    url_prefix: UrlPrefix = None,
    delay: Annotated[str | None, typer.Option("--in", help="Due after this delay instead of now, e.g. 10m.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Due at this ISO-8601 instant instead of now.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Schedule a Failed timer again with a fresh attempt budget, or every Failed one with --status Failed
    (narrowed by --since and --url-prefix); exit 4 when the timer is not Failed."""
    if (timer_id is None) == (status is None):
        raise InvalidInput("give either a timer ID or --status Failed (for every Failed timer), not both or neither")
    if timer_id is not None and (since is not None or url_prefix is not None):
        raise InvalidInput("--since and --url-prefix select timers for --status Failed; give them without an ID")
    if status is not None and parse_status(status) is not Status.FAILED:
        raise InvalidInput(f"--status {status!r} cannot be retried; only --status Failed is accepted")
    ended_after = _ago("--since", since)
    with service() as svc:
        when = retry_instant(_zone(at), svc.clock(), svc.settings.max_horizon, delay=delay, at=at)
        if timer_id is not None:
            _print_timer(svc.retry(timer_id, when), as_json)
            return
        moved: list[str] = []
        with progress("retrying", None, sys.stderr.isatty()) as advance:
            try:
                for timer in svc.retry_matching(since=ended_after, url_prefix=url_prefix, at=when):
                    moved.append(timer.timer_id)
                    advance(len(moved))
            except TimerError as exc:
                raise fail(f"{exc} ({len(moved)} timer(s) were retried before)", exc.exit_code) from None
    if as_json:
        print_json({"retried": moved})
    elif moved:
        out().print(f"retried {len(moved)} Failed timer(s): Scheduled again, due {_due(when)}")
    else:
        out().print("no Failed timer matched; none retried")


def _due(when: datetime | None) -> str:
    return "now" if when is None else f"at {format_instant(when)}"


#: What ``purge`` deletes when no ``--status`` is given: ended timers that are no longer of interest. Failed
#: ones are kept, for ``retry`` and a look at their deliveries, unless asked for (as retention does, longer).
PURGED_BY_DEFAULT = (Status.FINISHED, Status.CANCELLED)


@errors_to_exit_codes
def purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Delete timers that ended longer ago than this, e.g. 1d.")
    ],
    statuses: Annotated[
        list[str] | None,
        typer.Option("--status", help="Finished, Cancelled or Failed; repeatable (default: Finished and Cancelled)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete ended timers (Finished and Cancelled unless --status says) that ended more than --older-than ago."""
    wanted = list(dict.fromkeys(parse_status(s) for s in statuses)) if statuses else list(PURGED_BY_DEFAULT)
    for status in wanted:
        if status not in FINAL_STATUSES:
            raise InvalidInput(f"--status {status.value} cannot be purged; expected Finished, Cancelled or Failed")
    age = parse_duration(older_than)
    with service() as svc:
        count = svc.purge(wanted, age, dry_run=dry_run)
    if as_json:
        print_json({"wouldDelete" if dry_run else "deleted": count})
        return
    verb = "would delete" if dry_run else "deleted"
    kinds = " or ".join(s.value for s in wanted)
    out().print(f"{verb} {count} timer(s): {kinds}, ended more than {older_than} ago")


def _print_timer(timer: Timer, as_json: bool) -> None:
    if as_json:
        print_json(timer.to_json(now()))
    else:
        out().print(timer_table(timer, now()))

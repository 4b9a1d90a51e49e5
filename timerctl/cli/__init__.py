"""The ``timerctl`` command line: each command parses, calls the core, prints.

Exit codes: 0 ok, 1 not found, 2 invalid input, 3 a backend is unreachable, 4 conflict (a change the
timer's state refuses); ``watch`` also 5 Failed and 6 Cancelled.
"""

import sys
from typing import Annotated

import typer
from typer._click import exceptions as click_errors  # typer >= 0.27 vendors click

from timerctl import __version__
from timerctl.cli import timers
from timerctl.cli.demo import demo
from timerctl.cli.doctor import doctor
from timerctl.cli.serve import serve_app
from timerctl.cli.tokens import tokens_app
from timerctl.cli.verify import verify
from timerctl.cli.views import stats, watch

app = typer.Typer(
    name="timerctl",
    help="Durable webhook timers: POST to a URL at a time, through crashes and restarts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"timerctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Durable webhook timers: POST to a URL at a time, through crashes and restarts."""


app.command()(timers.create)
app.command()(timers.get)
app.command("list")(timers.list_timers)
app.command()(timers.cancel)
app.command()(timers.update)
app.command()(timers.fire)
app.command()(timers.retry)
app.command()(timers.purge)
app.command()(demo)
app.command()(doctor)
app.command()(verify)
app.command()(watch)
app.command()(stats)
app.add_typer(serve_app, name="serve")
app.add_typer(tokens_app, name="api-token")


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors become one ``error:`` line and exit 2, like every other bad input."""
    try:
        code = app(args=argv, standalone_mode=False)
    except click_errors.NoArgsIsHelpError:
        sys.exit(2)  # the help was printed; there is nothing more to say
    except click_errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click_errors.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

"""``api-token new``: make a token for the HTTP API and the line that lets the server accept it."""

from typing import Annotated

import typer

from timerctl.auth import SCOPES, new_token, token_line
from timerctl.cli.common import EXIT_INVALID, errors_to_exit_codes, fail, print_json

tokens_app = typer.Typer(
    help="API tokens for the HTTP API: the server accepts those listed in TIMERCTL_API_TOKENS_FILE.",
    no_args_is_help=True,
)


@tokens_app.command("new")
@errors_to_exit_codes
def new(
    scope: Annotated[
        str, typer.Option("--scope", help="read (GET only) or write (also POST and DELETE timers).")
    ] = "read",
    label: Annotated[str, typer.Option("--label", help="Who or what the token is for, kept on its line.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help='Print {"token": ..., "line": ...} only.')] = False,
) -> None:
    """Print a new random token, once, and the line to add to the tokens file (which keeps only its hash)."""
    if scope not in SCOPES:
        raise fail(f"--scope must be read or write, got {scope!r}", EXIT_INVALID)
    token = new_token()
    line = token_line(token, "read" if scope == "read" else "write", label)
    if as_json:
        print_json({"token": token, "line": line})
        return
    typer.echo(f"Token (shown only now; clients send it as 'Authorization: Bearer <token>'):\n  {token}")
    typer.echo(f"Add this line to the tokens file (TIMERCTL_API_TOKENS_FILE); the server re-reads it:\n  {line}")

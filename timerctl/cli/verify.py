"""``verify``: check a received delivery's Standard Webhooks signature from a shell."""

import sys
from typing import Annotated

import typer

from timerctl.cli.common import EXIT_INVALID, fail
from timerctl.model import InvalidInput


def verify(
    secret: Annotated[str, typer.Option("--secret", help="The signing secret (whsec_...), as the runner has it.")],
    header: Annotated[
        list[str], typer.Option("--header", "-H", help="A received header as 'Name: value'; repeat for each.")
    ],
) -> None:
    """Verify a delivery: body on stdin, headers as options; exit 0 when valid, 1 when not."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from timerctl.delivery import check_secret  # lazily: it imports the HTTP client

    headers: dict[str, str] = {}
    for item in header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise fail(f"--header {item!r} is not 'Name: value'", EXIT_INVALID)
        headers[name.strip().lower()] = value.strip()
    try:
        hook = Webhook(check_secret(secret))
    except InvalidInput as exc:
        raise fail(f"--secret: {exc}", EXIT_INVALID) from None
    body = sys.stdin.buffer.read()
    try:
        hook.verify(body.decode(), headers, json_parse=False)
    except (WebhookVerificationError, ValueError, UnicodeDecodeError) as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("valid")

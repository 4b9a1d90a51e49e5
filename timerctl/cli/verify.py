"""``verify``: check a received delivery's Standard Webhooks signature from a shell.

The secret comes from exactly one place, first found of: ``--secret`` or ``--secret-file`` (not both),
else ``TIMERCTL_SIGNING_SECRET`` (then the config file's ``signing_secret``), as the runner reads it. The
file and the variable keep the secret out of ``ps`` and shell history; ``--secret`` is for quick tries.
"""

import sys
from typing import Annotated

import typer

from timerctl.cli.common import EXIT_INVALID, fail, settings_from_env
from timerctl.model import InvalidInput

#: A secret file larger than this is not a secret file (a whsec_ secret is well under 200 bytes).
MAX_SECRET_FILE = 4096


def _secret_from_file(path: str) -> str:
    """The secret in ``path``: its text without surrounding whitespace (an editor's final newline)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise fail(f"--secret-file {path!r} cannot be read: {exc.strerror or exc}", EXIT_INVALID) from None
    if len(data) > MAX_SECRET_FILE:
        raise fail(f"--secret-file {path!r} is over {MAX_SECRET_FILE} bytes; expected one whsec_ secret", EXIT_INVALID)
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise fail(f"--secret-file {path!r} is not UTF-8 text; expected one whsec_ secret", EXIT_INVALID) from None


def _secret(secret: str | None, secret_file: str | None) -> tuple[str, str]:
    """The secret and where it came from (to name that source in errors); exit 2 when there is none."""
    if secret is not None and secret_file is not None:
        raise fail("give --secret or --secret-file, not both", EXIT_INVALID)
    if secret is not None:
        return secret, "--secret"
    if secret_file is not None:
        return _secret_from_file(secret_file), f"--secret-file {secret_file!r}"
    configured = settings_from_env().signing_secret
    if not configured:
        raise fail(
            "no signing secret: give --secret-file PATH, set TIMERCTL_SIGNING_SECRET, or give --secret", EXIT_INVALID
        )
    return configured, "TIMERCTL_SIGNING_SECRET"


def verify(
    header: Annotated[
        list[str], typer.Option("--header", "-H", help="A received header as 'Name: value'; repeat for each.")
    ],
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="The signing secret (whsec_...); visible in ps: prefer --secret-file."),
    ] = None,
    secret_file: Annotated[
        str | None,
        typer.Option("--secret-file", help="A file holding the signing secret (else TIMERCTL_SIGNING_SECRET)."),
    ] = None,
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
    key, source = _secret(secret, secret_file)
    try:
        hook = Webhook(check_secret(key))
    except InvalidInput as exc:
        raise fail(f"{source}: {exc}", EXIT_INVALID) from None
    body = sys.stdin.buffer.read()
    try:
        hook.verify(body.decode(), headers, json_parse=False)
    except (WebhookVerificationError, ValueError, UnicodeDecodeError) as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("valid")

"""``serve runner|consumer|all``: the long-running daemons, each a loop over the Protocols."""

from typing import TYPE_CHECKING, Annotated

import typer

from timerctl.cli.common import EXIT_INVALID, errors_to_exit_codes, fail, settings_from_env
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag
from timerctl.logs import setup_logging

if TYPE_CHECKING:
    from timerctl.auth import TokenStore

serve_app = typer.Typer(
    help="Run a daemon: the runner (fires timers), the consumer (Kafka -> store) or the HTTP API.",
    no_args_is_help=True,
)

LogFormat = Annotated[
    str | None, typer.Option("--log-format", help="json or text (default: json unless stderr is a terminal).")
]
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]
MetricsPort = Annotated[
    int | None,
    typer.Option("--metrics-port", min=1, max=65535, help="Serve Prometheus metrics at :PORT/metrics."),
]


def _start(log_format: str | None, log_level: str, metrics_port: int | None = None) -> StopFlag:
    if log_format not in (None, "json", "text"):
        raise fail(f"--log-format must be json or text, got {log_format!r}", EXIT_INVALID)
    setup_logging(log_format, log_level)
    if metrics_port is not None:
        from timerctl.metrics import serve_metrics

        try:
            serve_metrics(metrics_port)
        except OSError as exc:
            raise fail(f"cannot serve metrics on port {metrics_port}: {exc}", 3) from None
    stop = StopFlag()
    stop.install()
    return stop


@serve_app.command("runner")
@errors_to_exit_codes
def runner(log_format: LogFormat = None, log_level: LogLevel = "INFO", metrics_port: MetricsPort = None) -> None:
    """Fire due timers until SIGTERM/SIGINT; several runners may share one store."""
    from timerctl.daemons import runner as runner_daemon

    settings = settings_from_env()
    stop = _start(log_format, log_level, metrics_port)
    raise typer.Exit(runner_daemon.serve(settings, stop))


@serve_app.command("consumer")
@errors_to_exit_codes
def consumer(log_format: LogFormat = None, log_level: LogLevel = "INFO", metrics_port: MetricsPort = None) -> None:
    """Persist creates from Kafka into the store (needs TIMERCTL_KAFKA_BOOTSTRAP)."""
    from timerctl.daemons import consumer as consumer_daemon

    settings = settings_from_env()
    stop = _start(log_format, log_level, metrics_port)
    raise typer.Exit(consumer_daemon.serve(settings, stop))


Host = Annotated[str, typer.Option("--host", help="Address the HTTP API listens on.")]
Port = Annotated[int, typer.Option("--port", min=1, max=65535, help="Port the HTTP API listens on.")]
NoAuth = Annotated[
    bool,
    typer.Option(
        "--no-auth",
        help="Serve the HTTP API off loopback without API tokens (when a proxy in front authenticates).",
    ),
]


def _api_tokens(settings: Settings, host: str, no_auth: bool) -> "TokenStore | None":
    """The tokens guarding the API, read before anything starts; exit 2 when unreadable or when ``host``
    would expose the API without them and ``--no-auth`` did not ask for that."""
    from timerctl.auth import TokenStore, check_exposure

    check_exposure(host, settings.api_tokens_file, no_auth)
    return TokenStore(settings.api_tokens_file) if settings.api_tokens_file else None


@serve_app.command("api")
@errors_to_exit_codes
def api(
    host: Host = "127.0.0.1",
    port: Port = 3000,
    log_format: LogFormat = None,
    log_level: LogLevel = "INFO",
    metrics_port: MetricsPort = None,
    no_auth: NoAuth = False,
) -> None:
    """Serve the HTTP API (docs at /docs) until SIGTERM/SIGINT; exit 3 when it cannot listen."""
    from timerctl.daemons import api as api_daemon  # FastAPI loads here only: other commands must start fast

    settings = settings_from_env()
    tokens = _api_tokens(settings, host, no_auth)
    stop = _start(log_format, log_level, metrics_port)
    raise typer.Exit(api_daemon.serve(settings, stop, host=host, port=port, tokens=tokens))


@serve_app.command("all")
@errors_to_exit_codes
def serve_all(
    log_format: LogFormat = None,
    log_level: LogLevel = "INFO",
    metrics_port: MetricsPort = None,
    with_api: Annotated[bool, typer.Option("--api", help="Also serve the HTTP API.")] = False,
    api_host: Annotated[str, typer.Option("--api-host", help="Address the HTTP API listens on.")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option("--api-port", min=1, max=65535, help="Port of the HTTP API.")] = 3000,
    no_auth: NoAuth = False,
) -> None:
    """Run every role the configuration needs in one process: the runner, the consumer with Kafka, the API."""
    from timerctl.daemons import all as all_roles

    settings = settings_from_env()
    if no_auth and not with_api:
        raise fail("--no-auth applies to the HTTP API; add --api or drop --no-auth", EXIT_INVALID)
    api = all_roles.ApiRole(api_host, api_port, _api_tokens(settings, api_host, no_auth)) if with_api else None
    stop = _start(log_format, log_level, metrics_port)
    raise typer.Exit(all_roles.serve(settings, stop, api))

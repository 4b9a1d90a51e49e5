"""``timerctl serve api``: the HTTP API's daemon — uvicorn serving ``timerctl.api``'s app until stopped.

The routes live in ``timerctl.api``; this module owns the server: its limits (``api_limits``), the
sd_notify messages (READY once listening, WATCHDOG from the server's own loop, STOPPING), and the drain
on SIGTERM (stop accepting, answer what is in flight for at most ``TIMERCTL_DRAIN_TIMEOUT``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator

import uvicorn

from timerctl.api import create_app, open_tokens
from timerctl.api_limits import Limits, uvicorn_options
from timerctl.auth import TokenStore, is_loopback
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag, Watchdog, notify

log = logging.getLogger(__name__)

#: Exit code of ``serve api`` when it cannot listen (the address is taken or not ours).
EXIT_CANNOT_LISTEN = 3


class _Server(uvicorn.Server):
    watchdog = Watchdog()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the StopFlag owns SIGTERM/SIGINT; the watcher below turns it into should_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            notify("READY=1")

    async def on_tick(self, counter: int) -> bool:
        self.watchdog.ping()  # from the server's own loop: a hung loop stops the pings
        return await super().on_tick(counter)


def _no_colour(record: logging.LogRecord) -> bool:
    record.__dict__.pop("color_message", None)  # uvicorn's ANSI-coloured copy has no place in a JSON log
    return True


def serve(
    settings: Settings,
    stop: StopFlag,
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    tokens: TokenStore | None = None,
    limits: Limits = Limits(),
) -> int:
    """Serve the API until ``stop`` is set and in-flight requests are answered: exit code 0, or 3 when it
    cannot listen. Sets ``stop`` when it ends, so the roles sharing the process stop with it.

    ``tokens`` (else the settings' tokens file) guards the timer routes; the caller has checked that
    serving ``host`` without them was asked for (``timerctl.auth.check_exposure``).
    """
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_no_colour)  # once: the same filter is not added twice
    tokens = tokens if tokens is not None else open_tokens(settings)
    if tokens is not None and tokens.entries():
        log.info("HTTP API requires tokens from %s (%d listed)", tokens.path, len(tokens.entries()))
    elif tokens is not None:
        log.warning("tokens file %s lists no token: every timer request is refused until one is added", tokens.path)
    elif not is_loopback(host):
        log.warning("HTTP API on %s accepts every request without a token (--no-auth)", host)
    config = uvicorn.Config(
        create_app(settings, tokens=tokens, limits=limits),
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout.total_seconds())),
        **uvicorn_options(limits),
    )
    server = _Server(config)
    finished = threading.Event()

    def watch() -> None:
        stop.stopping.wait()
        notify("STOPPING=1")
        server.should_exit = True  # stop accepting, answer what is in flight (bounded by the drain timeout)
        while not finished.wait(0.2):
            if stop.forced.is_set():  # a second signal: drop what is in flight
                server.force_exit = True
                return

    threading.Thread(target=watch, name="timerctl-api-stop", daemon=True).start()
    try:
        server.run()
    except SystemExit:  # uvicorn's way to report that it could not bind or start the app
        log.error("HTTP API could not start on %s:%d", host, port)
        return EXIT_CANNOT_LISTEN
    finally:
        finished.set()
        stop.stopping.set()
    return 0 if server.started else EXIT_CANNOT_LISTEN

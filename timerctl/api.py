"""The HTTP API: the old service's routes over TimerService, plus cancel, idempotent ids and health.

Handlers are thin: parse, call the service, map domain errors to statuses. Bodies are validated by
``timerctl.spec`` (the same rules and messages as the CLI), not by pydantic; the models below only
document the JSON in the OpenAPI schema. Handlers are sync, so FastAPI runs them in its threadpool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from tzlocal import get_localzone

from timerctl import __version__, metrics
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag, Watchdog, notify
from timerctl.model import BackendUnavailable, Conflict, InvalidInput, NotFound, Timer, TimerError
from timerctl.model import validate_timer_id as _valid_id
from timerctl.service import TimerService, health_report
from timerctl.spec import spec_from_mapping

log = logging.getLogger(__name__)

STATUS_OF: dict[type[TimerError], int] = {InvalidInput: 400, NotFound: 404, Conflict: 409, BackendUnavailable: 503}
#: Exit code of ``serve api`` when it cannot listen (the address is taken or not ours).
EXIT_CANNOT_LISTEN = 3


class TimerRequest(BaseModel):
    """A timer to create: ``webhookUrl`` and one time form (hours/minutes/seconds, ``in`` or ``expiryTime``)."""

    model_config = ConfigDict(extra="forbid")
    webhookUrl: str = Field(description="Absolute http(s) URL to POST to (alias: url).")
    hours: int | None = Field(None, ge=0, description="Old-service form: hours >= 0.")
    minutes: int | None = Field(None, ge=0, le=59, description="Old-service form: 0-59.")
    seconds: int | None = Field(None, ge=0, le=59, description="Old-service form: 0-59.")
    in_: str | None = Field(None, alias="in", description="A delay such as 90s, 15m, 1h30m.")
    expiryTime: str | None = Field(None, description="ISO-8601 instant (alias: at); naive means server-local.")
    payload: Any = Field(None, description="Any JSON value up to 64 KiB, sent in the webhook body.")
    timerId: str | None = Field(None, description="Your id (alias: id); makes the create idempotent.")


class TimerOut(BaseModel):
    timerId: str
    timeLeft: int = Field(description="Whole seconds until expiry, never negative.")
    timerStatus: str


class TimerResponse(BaseModel):
    code: int
    message: str
    timer: TimerOut


class ErrorResponse(BaseModel):
    code: int
    message: str


def _errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for statuses given as ``e404="No such timer"`` (``e4XX`` for any other)."""
    return {code[1:]: {"model": ErrorResponse, "description": text} for code, text in described.items()}


CREATE_BODY = {"content": {"application/json": {"schema": TimerRequest.model_json_schema(by_alias=True)}}}


def _reply(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **extra}, status_code=code)


def _timer_reply(code: int, message: str, timer: Timer, service: TimerService) -> JSONResponse:
    data = timer.to_json(service.clock())
    return _reply(code, message, timer={k: data[k] for k in ("timerId", "timeLeft", "timerStatus")})


class _Backends:
    """The app's one TimerService, with its lazy backends opened one thread at a time.

    TimerService opens backends in ``cached_property``s, which have no lock from Python 3.12 on; two
    requests racing on the first use would each open a connection. Once open, the backends are safe to
    share: SqliteStore locks, pymongo, redis-py and kafka-python's producer are thread-safe.
    """

    def __init__(self, service: TimerService) -> None:
        self.service = service
        self._lock = threading.Lock()

    def ready(self, *parts: str) -> TimerService:
        for part in parts:
            if part not in vars(self.service):
                with self._lock, contextlib.suppress(TimerError):  # the call itself reports a failure
                    getattr(self.service, part)
        return self.service


def _backends(request: Request) -> _Backends:
    backends: _Backends = request.app.state.backends
    return backends


Backends = Annotated[_Backends, Depends(_backends)]
# Declaring 4XX also keeps FastAPI from documenting the 422 this API never sends.
router = APIRouter(
    tags=["timers"], responses=_errors(e400="Invalid input", e4XX="Other client error", e503="A backend is unreachable")
)


@router.post(
    "/v1/timer",
    status_code=201,
    response_model=TimerResponse,
    responses={
        200: {"model": TimerResponse, "description": "The same timerId with the same spec exists already"},
        **_errors(e409="The timerId exists with a different spec"),
    },
    openapi_extra={"requestBody": CREATE_BODY},
)
def create_timer(backends: Backends, body: Annotated[Any, Body()] = None) -> JSONResponse:
    """Create a timer (201); a repeated timerId with the same spec returns the existing timer (200)."""
    if isinstance(body, bytes):  # a JSON body sent without a JSON content type, as `curl -d` does
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if body is None:
        raise InvalidInput('missing request body; expected a JSON object such as {"webhookUrl": ..., "seconds": 30}')
    spec = spec_from_mapping(body, get_localzone())
    service = backends.ready("cache", "queue", *(["store"] if spec.timer_id is not None else []))
    existed = False
    if spec.timer_id is not None:
        with contextlib.suppress(NotFound):
            existed = bool(service.get(spec.timer_id))
    timer = service.create(spec)  # the existing timer again, or Conflict, when the id is taken
    if existed:
        return _timer_reply(200, "Timer Already Exists!", timer, service)
    metrics.CREATED.inc()
    return _timer_reply(201, "Timer Created!", timer, service)


@router.get("/v1/timer/{timerId:path}", response_model=TimerResponse, responses=_errors(e404="No such timer"))
def get_timer(timerId: str, backends: Backends) -> JSONResponse:
    """The timer's status and whole seconds left; 404 when there is no such timer."""
    service = backends.ready("cache", "store")
    return _timer_reply(200, "Timer Found!", service.get(_valid_id(timerId)), service)


@router.delete(
    "/v1/timer/{timerId:path}",
    response_model=TimerResponse,
    responses=_errors(e404="No such timer", e409="The timer is not Scheduled"),
)
def cancel_timer(timerId: str, backends: Backends) -> JSONResponse:
    """Cancel a Scheduled timer so it never fires; 409 when it already ran, is running or was cancelled."""
    service = backends.ready("cache", "store", "queue")
    return _timer_reply(200, "Timer Cancelled!", service.cancel(_valid_id(timerId)), service)


def health(backends: Backends) -> JSONResponse:
    """Each backend (store, queue, cache) with its round trip: 200 when all answer, 503 when one does not."""
    parts = backends.ready("store", "queue", "cache").check()
    return JSONResponse(health_report(parts), status_code=503 if any(e for _, _, e in parts.values()) else 200)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 as our 400: the first problem on one line."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return _reply(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', 'decode error')}")
    where = ".".join(str(part) for part in first.get("loc", ()))
    return _reply(400, f"{where}: {first.get('msg', 'invalid request')}")


def _timer_error(request: Request, exc: Exception) -> JSONResponse:
    code = next((status for kind, status in STATUS_OF.items() if isinstance(exc, kind)), 500)
    return _reply(code, str(exc))


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the same shape as ours."""
    assert isinstance(exc, HTTPException)
    response = _reply(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


def create_app(settings: Settings, service: TimerService | None = None) -> FastAPI:
    """The API over ``service``, or over a TimerService opened from ``settings`` at start and closed at stop.

    A service passed in stays the caller's to close.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = service if service is not None else TimerService(settings)
        app.state.backends = _Backends(owned)
        try:
            yield
        finally:
            if service is None:
                owned.close()

    app = FastAPI(
        title="timerctl",
        version=__version__,
        description="Durable webhook timers: POST to a URL at a time, through crashes and restarts.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(router, prefix="/api", tags=["timers (old-service paths)"])
    app.add_api_route("/health", health, methods=["GET"], tags=["health"], response_model=None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TimerError, _timer_error)
    app.add_exception_handler(HTTPException, _http_error)
    return app


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


def serve(settings: Settings, stop: StopFlag, *, host: str = "127.0.0.1", port: int = 3000) -> int:
    """Serve the API until ``stop`` is set and in-flight requests are answered: exit code 0, or 3 when it
    cannot listen. Sets ``stop`` when it ends, so the roles sharing the process stop with it."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_no_colour)  # once: the same filter is not added twice
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout)),
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

"""The HTTP API: the old service's routes over TimerService, plus cancel, update, fire now, retry, a timer's
deliveries, idempotent ids and health.

Handlers are thin: parse, call the service, map domain errors to statuses. Bodies are validated by
``timerctl.spec`` (the same rules and messages as the CLI), not by pydantic; the models in ``api_models``
only document the JSON in the OpenAPI schema. Handlers are sync, so FastAPI runs them in its threadpool.

With ``TIMERCTL_API_TOKENS_FILE`` set every timer route needs a Bearer token (``timerctl.auth``), checked
before the body is read; ``/health`` and the docs stay open. ``timerctl.api_limits`` bounds bodies and
slow clients. Every error is ``{code, message}`` with a one-line message, URLs in it redacted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from tzlocal import get_localzone

from timerctl import __version__, metrics
from timerctl.api_limits import BodyLimit, Limits
from timerctl.api_models import (
    ErrorResponse,
    RetryRequest,
    TimerDetailResponse,
    TimerRequest,
    TimerResponse,
    UpdateRequest,
)
from timerctl.auth import TokenStore, allows
from timerctl.config import Settings
from timerctl.model import BackendUnavailable, Conflict, InvalidInput, NotFound, Timer, TimerError
from timerctl.model import validate_timer_id as _valid_id
from timerctl.redaction import one_line
from timerctl.service import TimerService, health_report
from timerctl.spec import detail_json, retry_from_mapping, spec_from_mapping, update_from_mapping

log = logging.getLogger(__name__)

STATUS_OF: dict[type[TimerError], int] = {InvalidInput: 400, NotFound: 404, Conflict: 409, BackendUnavailable: 503}
#: Deepest nesting of arrays and objects in a create's body: serde_json's default, so a payload accepted
#: here can be parsed by common receivers, and no later encoder runs out of stack on it.
MAX_JSON_DEPTH = 128
MISSING_BODY = 'missing request body; expected a JSON object such as {"webhookUrl": ..., "seconds": 30}'
MISSING_CHANGE = 'missing request body; expected a JSON object of what to change, such as {"in": "10m"}'
TOO_DEEP = f"request body nests arrays and objects too deeply; at most {MAX_JSON_DEPTH} levels are accepted"


def _errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for statuses given as ``e404="No such timer"`` (``e4XX`` for any other)."""
    return {code[1:]: {"model": ErrorResponse, "description": text} for code, text in described.items()}


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """An OpenAPI request body documenting ``model`` (the handler reads and checks the raw body itself)."""
    schema = model.model_json_schema(by_alias=True)
    return {"required": required, "content": {"application/json": {"schema": schema}}}


CREATE_BODY = _body(TimerRequest)
#: A change the timer's state refuses: the documented 409 of update, fire and retry.
WRONG_STATE = "The timer's state refuses it (its POST already started, or it ended)"


def _reply(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **extra}, status_code=code)


def _error(code: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error reply safe to send anyone: one line, URLs without credentials or query, no lone surrogates."""
    text = one_line(message).encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"code": code, "message": text}, status_code=code, headers=headers)


def _timer_reply(code: int, message: str, timer: Timer, service: TimerService) -> JSONResponse:
    data = timer.to_json(service.clock())
    return _reply(code, message, timer={k: data[k] for k in ("timerId", "timeLeft", "timerStatus")})


class _Backends:
    """The app's one TimerService, with its lazy backends opened one thread at a time.

    TimerService opens backends in ``cached_property``s, which have no lock from Python 3.12 on; two
    requests racing on the first use would each open a connection. Once open, the backends are safe to
    share: SqliteStore locks; pymongo, redis-py and confluent-kafka's producer are thread-safe.
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
_bearer = HTTPBearer(auto_error=False, description="An API token from `timerctl api-token new`.")
# RFC 6750's challenges: no token, a token we do not know, a token without the scope needed.
_NO_TOKEN = {"WWW-Authenticate": "Bearer"}
_BAD_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
_READ_ONLY = {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="write"'}


def _authorize(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Let the request through when its Bearer token is in the tokens file with a scope for its method.

    401 (with ``WWW-Authenticate``) for no token or an unknown one, 403 for a read token on a write.
    """
    tokens: TokenStore = request.app.state.tokens
    scope = tokens.scope_of(credentials.credentials if credentials is not None else None)
    if scope is None and credentials is None:
        raise HTTPException(401, "missing API token; send the header Authorization: Bearer <token>", _NO_TOKEN)
    if scope is None:
        raise HTTPException(401, "unknown API token; it is not in the server's tokens file", _BAD_TOKEN)
    if not allows(scope, write=request.method not in ("GET", "HEAD")):
        raise HTTPException(403, f"this API token has scope {scope}; {request.method} needs scope write", _READ_ONLY)


async def _raw_body(request: Request) -> bytes:
    """The request body, read only once the token was checked (BodyLimit bounds its size and time)."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise HTTPException(400, "the client closed the connection before sending the whole body") from None


RawBody = Annotated[bytes, Depends(_raw_body)]
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
def create_timer(backends: Backends, body: RawBody) -> JSONResponse:
    """Create a timer (201); a repeated timerId with the same spec returns the existing timer (200)."""
    spec = spec_from_mapping(_json_body(body), get_localzone())
    service = backends.ready("cache", "queue", *(["store"] if spec.timer_id is not None else []))
    done = service.create(spec)  # the existing timer again, or Conflict, when the id is taken
    if not done.new:
        return _timer_reply(200, "Timer Already Exists!", done.timer, service)
    metrics.CREATED.inc()
    return _timer_reply(201, "Timer Created!", done.timer, service)


def _json_body(body: bytes, optional: bool = False, missing: str = MISSING_BODY) -> Any:
    """The body as JSON whatever its content type (``curl -d`` sends form-encoded); InvalidInput if it is not.

    An ``optional`` body may be empty (or ``null``): None. Otherwise that is InvalidInput(``missing``).
    """
    try:
        data = json.loads(body) if body.strip() else None
    except RecursionError:  # Python's parser gives up near 1,000 levels
        raise InvalidInput(TOO_DEEP) from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if data is None:
        if optional:
            return None
        raise InvalidInput(missing)
    if _depth(data) > MAX_JSON_DEPTH:
        raise InvalidInput(TOO_DEEP)
    return data


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), counted without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending and deepest <= MAX_JSON_DEPTH:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _changed(op: str, message: str, timer: Timer, service: TimerService) -> JSONResponse:
    """The answer to a change that was made (counted in ``timerctl_timers_changed_total{op}``)."""
    metrics.CHANGED.labels(op=op).inc()
    return _timer_reply(200, message, timer, service)


@router.post(
    "/v1/timer/{timerId:path}/fire",
    response_model=TimerResponse,
    responses=_errors(e404="No such timer", e409=WRONG_STATE),
)
def fire_timer(timerId: str, backends: Backends) -> JSONResponse:
    """Make a Scheduled or Retrying timer due now; 409 once its POST started or it ended."""
    service = backends.ready("cache", "store", "queue")
    return _changed("fire", "Timer Due Now!", service.fire(_valid_id(timerId)), service)


@router.post(
    "/v1/timer/{timerId:path}/retry",
    response_model=TimerResponse,
    responses=_errors(e404="No such timer", e409="The timer is not Failed"),
    openapi_extra={"requestBody": _body(RetryRequest, required=False)},
)
def retry_timer(timerId: str, backends: Backends, body: RawBody) -> JSONResponse:
    """Schedule a Failed timer again with a fresh attempt budget, due now or at ``in``/``at``; 409 unless Failed."""
    timer_id = _valid_id(timerId)
    service = backends.ready("cache", "store", "queue")
    at = retry_from_mapping(
        _json_body(body, optional=True), get_localzone(), service.clock(), service.settings.max_horizon
    )
    return _changed("retry", "Timer Retried!", service.retry(timer_id, at), service)


@router.get(
    "/v1/timer/{timerId:path}",
    response_model=TimerResponse | TimerDetailResponse,
    responses=_errors(e404="No such timer"),
)
def get_timer(
    timerId: str,
    backends: Backends,
    deliveries: Annotated[
        bool, Query(description="Answer every field of the timer, with its most recent attempts.")
    ] = False,
) -> JSONResponse:
    """The timer's status and whole seconds left (with ``?deliveries=true``: every field and its attempts)."""
    service = backends.ready("cache", "store")
    timer = service.get(_valid_id(timerId))
    if not deliveries:
        return _timer_reply(200, "Timer Found!", timer, service)
    detail = detail_json(timer, service.deliveries(timer.timer_id), service.clock())
    return _reply(200, "Timer Found!", timer=detail)


@router.patch(
    "/v1/timer/{timerId:path}",
    response_model=TimerResponse,
    responses=_errors(e404="No such timer", e409=WRONG_STATE),
    openapi_extra={"requestBody": _body(UpdateRequest)},
)
def update_timer(timerId: str, backends: Backends, body: RawBody) -> JSONResponse:
    """Change a Scheduled or Retrying timer in place (any of a create's fields); 409 once its POST started or it
    ended."""
    timer_id = _valid_id(timerId)
    service = backends.ready("cache", "store", "queue")
    change = update_from_mapping(
        _json_body(body, missing=MISSING_CHANGE),
        get_localzone(),
        service.clock(),
        service.settings.max_horizon,
        timer_id=timer_id,
    )
    return _changed("update", "Timer Updated!", service.update(timer_id, change), service)


@router.delete(
    "/v1/timer/{timerId:path}",
    response_model=TimerResponse,
    responses=_errors(e404="No such timer", e409=WRONG_STATE),
)
def cancel_timer(timerId: str, backends: Backends) -> JSONResponse:
    """Cancel a Scheduled or Retrying timer so it never fires; 409 once its POST started or it ended."""
    service = backends.ready("cache", "store", "queue")
    return _changed("cancel", "Timer Cancelled!", service.cancel(_valid_id(timerId)), service)


def health(backends: Backends) -> JSONResponse:
    """Each backend (store, queue, cache) with its round trip: 200 when all answer, 503 when one does not."""
    parts = backends.ready("store", "queue", "cache").check()
    return JSONResponse(health_report(parts), status_code=503 if any(e for _, _, e in parts.values()) else 200)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 as our 400: the first problem on one line."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return _error(400, f"{where}: {first.get('msg', 'invalid request')}")


def _timer_error(request: Request, exc: Exception) -> JSONResponse:
    code = next((status for kind, status in STATUS_OF.items() if isinstance(exc, kind)), 500)
    return _error(code, str(exc))


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) and ours (401, 403, 408, 413) in our shape."""
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), exc.headers)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug's 500 in our shape; uvicorn logs the traceback, the client gets no details."""
    return _error(500, "internal error; the server's log has the details")


def open_tokens(settings: Settings) -> TokenStore | None:
    """The tokens from ``TIMERCTL_API_TOKENS_FILE``, or None when unset; InvalidInput if it cannot be read."""
    return TokenStore(settings.api_tokens_file) if settings.api_tokens_file else None


def create_app(
    settings: Settings,
    service: TimerService | None = None,
    *,
    tokens: TokenStore | None = None,
    limits: Limits = Limits(),
) -> FastAPI:
    """The API over ``service``, or over a TimerService opened from ``settings`` at start and closed at stop.

    A service passed in stays the caller's to close. Timer routes need a token from ``tokens``, else from
    the settings' tokens file (InvalidInput when it cannot be read), and are open when there is none.
    """
    tokens = tokens if tokens is not None else open_tokens(settings)

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
    app.state.tokens = tokens
    # Listed before the route's own: the token is checked before the body is read.
    guard = [Depends(_authorize)] if tokens is not None else []
    app.include_router(router, dependencies=guard)
    app.include_router(router, prefix="/api", tags=["timers (old-service paths)"], dependencies=guard)
    app.add_api_route("/health", health, methods=["GET"], tags=["health"], response_model=None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TimerError, _timer_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(BodyLimit, limits=limits)
    return app

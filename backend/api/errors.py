"""Errors as HTTP responses: each `ServiceError` kind has one status. The services name
the domain field an error is about (`("retrieval", "filter")`, `("conversation_id",)`);
here it gets its place in the request: a path parameter of the route, else a query
parameter, else the body. Errors of the lower layers (an unknown model, a prompt that
cannot fit, a malformed filter) are given their field here too, so the layers below know
nothing of HTTP. What the web layer refuses itself (a header, text no database can store)
it raises located, in FastAPI's own shape (`invalid_request`). Under `/v1`, OpenAI's."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from backend.common.errors import (
    Busy,
    Conflict,
    Forbidden,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    RetryLater,
    ServiceError,
    SignInFailed,
    TooManyRequests,
    Unavailable,
    UpstreamFailed,
)
from backend.llm import UnknownModel
from backend.retrieval.filters import FilterError
from backend.services.prompt import PromptTooLong

ERROR_STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    InvalidInput: 422,
    Conflict: 409,
    NotAuthenticated: 401,
    SignInFailed: 400,
    UpstreamFailed: 502,
    Forbidden: 403,
    PayloadTooLarge: 413,
    Unavailable: 503,
    TooManyRequests: 429,
}

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# Errors of the layers below the services, and the field each is about.
REQUEST_FIELDS: dict[type[Exception], tuple[str, ...]] = {
    UnknownModel: ("model",),
    PromptTooLong: ("message",),
    FilterError: ("filter",),
}


def invalid_request(location: tuple[str | int, ...], message: str) -> RequestValidationError:
    """A 422 for what the web layer refuses itself, at `location` (`("header", name)`)."""
    return RequestValidationError([{"type": "value_error", "loc": location, "msg": message}])


def _located(request: Request, field: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Where a domain field sits in this request."""
    name = field[0]
    if name in request.path_params:
        return ("path", *field)
    if isinstance(name, str) and name in request.query_params:
        return ("query", *field)
    return ("body", *field)


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def openai_error(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error shape, for the /v1 routes."""
    error = {
        "message": message,
        "type": OPENAI_TYPES.get(status, "api_error"),
        "param": param,
        "code": code,
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def service_error_response(request: Request, exc: ServiceError) -> JSONResponse:
    status = next((code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind)), 400)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RetryLater):
        headers["Retry-After"] = str(exc.retry_after)
    if _is_openai(request):
        param = ".".join(str(p) for p in exc.field) if exc.field else None
        code = exc.code or ("invalid_api_key" if status == 401 else None)
        # OpenAI answers a bad parameter with 400, where the native API says 422.
        status = 400 if status == 422 else status
        return openai_error(status, exc.detail, code=code, param=param, headers=headers)
    detail: object = exc.detail
    if status == 422 and exc.field:
        # The same shape as FastAPI's own validation errors, so clients parse one format.
        location = _located(request, exc.field)
        detail = [{"loc": list(location), "msg": exc.detail, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(request, exc)


async def _lower_layer_error(request: Request, exc: Exception) -> JSONResponse:
    field = next(where for kind, where in REQUEST_FIELDS.items() if isinstance(exc, kind))
    return service_error_response(request, InvalidInput(str(exc), field=field))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if not _is_openai(request):
        return await request_validation_exception_handler(request, exc)
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"][1:])
    return openai_error(400, f"{param}: {first['msg']}", code="invalid_value", param=param)


async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    """More requests than the database serves in time (its connections all taken, or
    SQLite's one writer held past its timeout): a 503 to try again, not a 500. Other
    database errors stay 500s."""
    if isinstance(exc, OperationalError) and "database is locked" not in str(exc.orig):
        raise exc
    busy = Busy("The database is busy; please try again in a few seconds.", retry_after=5)
    return service_error_response(request, busy)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    for kind in REQUEST_FIELDS:
        app.add_exception_handler(kind, _lower_layer_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PoolTimeout, _database_busy)
    app.add_exception_handler(OperationalError, _database_busy)

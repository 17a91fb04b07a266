"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ordersync.adapters.channels.registry import InboundError
from ordersync.domain import errors as e

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://ordersync.dev/problems/"

_DOMAIN_STATUS: dict[type[e.DomainError], int] = {
    e.InvalidTransition: 409,
    e.OrderAlreadyExists: 409,
    e.DeliveryNotReplayable: 409,
    e.IdempotencyKeyReused: 422,
    e.InvalidOrder: 422,
    e.OrderNotFound: 404,
    e.DeliveryNotFound: 404,
}

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_body(status: int, code: str, detail: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "type": PROBLEM_BASE + code,
            "title": _TITLES.get(status, "Error"),
            "status": status,
            "detail": detail,
            **{k: v for k, v in extra.items() if v is not None},
        }
    )


def problem(status: int, code: str, detail: str, **extra: Any) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="ordersync"'} if status == 401 else None
    return Response(
        problem_body(status, code, detail, **extra),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


class ApiProblem(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _api(_: Request, exc: ApiProblem) -> Response:
        return problem(exc.status, exc.code, exc.detail, **exc.extra)

    @app.exception_handler(InboundError)
    async def _inbound(_: Request, exc: InboundError) -> Response:
        return problem(exc.status, exc.code, exc.detail, path=exc.path)

    @app.exception_handler(e.DomainError)
    async def _domain(_: Request, exc: e.DomainError) -> Response:
        status = next((s for t, s in _DOMAIN_STATUS.items() if isinstance(exc, t)), 422)
        extra: dict[str, Any] = {}
        if isinstance(exc, e.InvalidTransition):
            extra = {"current": exc.current, "target": exc.target, "field": exc.what}
        if isinstance(exc, e.OrderAlreadyExists):
            extra = {"order_id": exc.order_id}
        return problem(status, exc.code, str(exc), **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"path": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in exc.errors()
        ]
        return problem(422, "validation_error", "the request is not valid", errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return problem(500, "internal_error", "an unexpected error occurred; it has been logged")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail))

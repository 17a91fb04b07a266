"""Shared helpers for routes: the hub, JSON responses, opaque cursors."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from ordersync.bootstrap import Hub
from ordersync.entrypoints.api.errors import ApiProblem


def hub(request: Request) -> Hub:
    h: Hub = request.app.state.hub
    return h


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def encode_cursor(value: str | int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("NUL in cursor")
        return value
    except (ValueError, orjson.JSONDecodeError):
        raise ApiProblem(400, "invalid_cursor", "the cursor is not one this API returned") from None

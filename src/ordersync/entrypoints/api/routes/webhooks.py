"""Signed channel webhooks: verified, then durably recorded before we answer 200.

`receive` is the whole behaviour. It is served two ways: the FastAPI route below (which is
what /openapi.json documents), and `WebhookFastPath`, a plain ASGI layer that answers the
same path without FastAPI's routing and dependency machinery. That machinery costs about a
quarter of the CPU of the hub's busiest request, and this request does its own auth (the
platform's signature) and its own parsing, so it gains nothing from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordersync.adapters.channels.base import Capability
from ordersync.adapters.channels.push_fetch import FetchesPushedOrders, ingest_pushed
from ordersync.adapters.channels.registry import InboundError, connector_for
from ordersync.bootstrap import Hub
from ordersync.clock import utcnow
from ordersync.domain.commands import IngestChannelOrder
from ordersync.entrypoints.api.errors import ApiProblem, problem_body
from ordersync.entrypoints.api.schemas import WebhookAck

log = logging.getLogger(__name__)
router = APIRouter(tags=["channels"])

MAX_BODY = 5 * 1024 * 1024
_PREFIX, _SUFFIX = "/v1/channels/", "/webhooks"


async def receive(hub: Hub, channel_id: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """The acknowledgement body; raises ApiProblem / InboundError for a refusal."""
    started = time.perf_counter()
    channel = hub.settings.channel(channel_id)
    if channel is None:
        raise ApiProblem(404, "unknown_channel", f"no channel {channel_id!r} is configured")
    if len(body) > MAX_BODY:
        raise ApiProblem(413, "body_too_large", f"webhook bodies are limited to {MAX_BODY} bytes")
    connector = connector_for(channel.kind)
    if Capability.PUSH not in connector.capabilities:
        raise ApiProblem(404, "push_not_supported", f"{channel.kind} channels are pulled")
    if not connector.verify(channel, headers, body):
        hub.metrics.webhooks.labels(channel_id, "forged").inc()
        raise ApiProblem(401, "invalid_signature", "the webhook signature does not verify")
    msg = connector.parse(channel, headers, body)
    if msg.ack_only:  # a platform handshake (WooCommerce's activation ping)
        return orjson.dumps({"outcome": "ignored", "order_id": None})
    if isinstance(connector, FetchesPushedOrders) and (
        pushed := connector.pushed_orders(channel, headers, body)
    ):
        # The push names orders (Douyin): fetch each one's detail and ingest it.
        results = await ingest_pushed(
            connector,
            channel,
            pushed,
            fetch=hub.push_fetch,
            ingest=hub.handle,
            audit=orjson.loads(msg.headers),
            received_at=utcnow(),
        )
        for r in results:
            hub.metrics.webhooks.labels(channel_id, r.outcome).inc()
        hub.metrics.ingest_seconds.labels(channel_id).observe(time.perf_counter() - started)
        orders = [{"outcome": r.outcome, "order_id": r.order_id} for r in results]
        # code 0 / msg "success" is the answer the platform's message service expects.
        return orjson.dumps({"code": 0, "msg": "success", **orders[0], "orders": orders})
    result = await hub.handle(
        IngestChannelOrder(
            channel_id=channel_id,
            kind=channel.kind,
            message_id=msg.message_id,
            topic=msg.topic,
            snapshot=msg.snapshot,
            received_at=utcnow(),
            body=body,
            headers=msg.headers,
        )
    )
    hub.metrics.webhooks.labels(channel_id, result.outcome).inc()
    hub.metrics.ingest_seconds.labels(channel_id).observe(time.perf_counter() - started)
    return orjson.dumps({"outcome": result.outcome, "order_id": result.order_id})


@router.post(
    "/v1/channels/{channel_id}/webhooks",
    response_model=WebhookAck,
    summary="Receive a channel's signed webhook (e.g. Shopify orders/create)",
    responses={401: {"description": "Forged or missing signature; nothing stored"}},
)
async def receive_webhook(channel_id: str, request: Request) -> Response:
    ack = await receive(request.app.state.hub, channel_id, request.headers, await request.body())
    return Response(ack, media_type="application/json")


class WebhookFastPath:
    """ASGI middleware answering `POST /v1/channels/{id}/webhooks` directly (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive_: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.startswith(_PREFIX)
            or not path.endswith(_SUFFIX)
            or "/" in (channel_id := path[len(_PREFIX) : -len(_SUFFIX)])
            or not channel_id
        ):
            await self.app(scope, receive_, send)
            return
        status, content_type, payload = 200, b"application/json", b""
        try:
            body = await _read_body(receive_)
            payload = await receive(scope["app"].state.hub, channel_id, Headers(scope=scope), body)
        except ApiProblem as e:
            status, content_type = e.status, b"application/problem+json"
            payload = problem_body(e.status, e.code, e.detail, **e.extra)
        except InboundError as e:
            status, content_type = e.status, b"application/problem+json"
            payload = problem_body(e.status, e.code, e.detail, path=e.path)
        except _BodyTooLarge:
            status, content_type = 413, b"application/problem+json"
            payload = problem_body(413, "body_too_large", f"limit is {MAX_BODY} bytes")
        except Exception:
            log.exception("unhandled error receiving a webhook")
            status, content_type = 500, b"application/problem+json"
            payload = problem_body(500, "internal_error", "an unexpected error occurred")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive_: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive_()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away before sending the body")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)

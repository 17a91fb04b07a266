"""Signed channel webhooks: verified, then durably recorded before we answer 200."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from ordersync.adapters.channels.registry import connector_for
from ordersync.clock import utcnow
from ordersync.domain.commands import IngestChannelOrder
from ordersync.entrypoints.api.deps import hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.entrypoints.api.schemas import WebhookAck

router = APIRouter(tags=["channels"])

MAX_BODY = 5 * 1024 * 1024


@router.post(
    "/v1/channels/{channel_id}/webhooks",
    response_model=WebhookAck,
    summary="Receive a channel's signed webhook (e.g. Shopify orders/create)",
    responses={401: {"description": "Forged or missing signature; nothing stored"}},
)
async def receive_webhook(channel_id: str, request: Request) -> Response:
    started = time.perf_counter()
    h = hub(request)
    channel = h.settings.channel(channel_id)
    if channel is None:
        raise ApiProblem(404, "unknown_channel", f"no channel {channel_id!r} is configured")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiProblem(413, "body_too_large", f"webhook bodies are limited to {MAX_BODY} bytes")
    connector = connector_for(channel.kind)
    headers = request.headers
    if not connector.verify(channel.secret.get_secret_value(), headers, body):
        h.metrics.webhooks.labels(channel_id, "forged").inc()
        raise ApiProblem(401, "invalid_signature", "the webhook signature does not verify")
    msg = connector.parse(channel_id, headers, body, shop_domain=channel.shop_domain)
    result = await h.handle(
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
    h.metrics.webhooks.labels(channel_id, result.outcome).inc()
    h.metrics.ingest_seconds.labels(channel_id).observe(time.perf_counter() - started)
    return json_response({"outcome": result.outcome, "order_id": result.order_id})

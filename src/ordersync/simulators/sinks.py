"""Downstream systems (ERP, WMS, payment) that receive the hub's Standard Webhooks events.

A sink verifies each event as a careful integrator would (the `standardwebhooks` package,
timestamp tolerance included), applies it exactly once per `webhook-id`, and keeps a ledger
the end-to-end checks read: nothing lost, nothing applied twice, one order's events in order.
Faults are injected before anything is recorded, so a failed attempt never counts as applied.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def new_secret() -> str:
    """A fresh destination secret in the Standard Webhooks `whsec_<base64>` form."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class FaultPlan:
    """How badly a sink behaves. Every fault hits before the event is recorded.

    `fail_first` counts per webhook id, so it checks that the sender retries each event
    rather than only surviving a flaky start.
    """

    error_rate: float = 0.0
    timeout_rate: float = 0.0
    hang_seconds: float = 30.0
    latency: tuple[float, float] = (0.0, 0.0)
    fail_first: int = 0
    seed: int | None = None


@dataclass
class LedgerEntry:
    """One event applied by the sink, as the sink saw it on the attempt that applied it."""

    webhook_id: str
    type: str
    order_id: str | None
    version: int | None
    received_at: float
    webhook_timestamp: int
    attempt: int
    data: dict[str, Any] = field(repr=False)


class Sink:
    """A Standard Webhooks receiver with a dedupe table, a ledger and injectable faults."""

    def __init__(self, name: str, secret: str, faults: FaultPlan | None = None) -> None:
        self.name = name
        self.secret = secret
        self.faults = faults or FaultPlan()
        self.ledger: list[LedgerEntry] = []
        self.attempts = 0
        self.failures_injected = 0
        self.duplicates_suppressed = 0
        self.rejected = 0
        self.base_url: str | None = None
        self._webhook = Webhook(secret)
        self._rng = random.Random(self.faults.seed)
        self._attempts_by_id: dict[str, int] = defaultdict(int)
        self._applied: set[str] = set()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def events_url(self) -> str:
        """Where the hub should POST events (after `start()`)."""
        if self.base_url is None:
            raise RuntimeError(f"sink {self.name!r} is not started")
        return f"{self.base_url}/events"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/events", self._receive)
        app.router.add_post("/", self._receive)
        app.router.add_get("/ledger", self._dump)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 picks a free port) and return the base URL."""
        # A short shutdown grace: hanging handlers are woken by stop() and record nothing.
        self._runner = web.AppRunner(self.app(), shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def applied_by_order(self) -> dict[str, list[LedgerEntry]]:
        """Applied events grouped by order id, each list in arrival order."""
        grouped: dict[str, list[LedgerEntry]] = defaultdict(list)
        for entry in self.ledger:
            grouped[str(entry.order_id)].append(entry)
        return dict(grouped)

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "attempts": self.attempts,
            "applied": len(self.ledger),
            "failures_injected": self.failures_injected,
            "duplicates_suppressed": self.duplicates_suppressed,
            "rejected": self.rejected,
        }

    async def _receive(self, request: web.Request) -> web.Response:
        self.attempts += 1
        raw = await request.read()
        try:
            payload = self._webhook.verify(raw, dict(request.headers))
        except (WebhookVerificationError, ValueError):
            # ValueError covers malformed base64, signature lists and JSON bodies.
            self.rejected += 1
            return web.json_response({"error": "invalid signature"}, status=401)
        webhook_id = request.headers["webhook-id"]
        self._attempts_by_id[webhook_id] += 1
        attempt = self._attempts_by_id[webhook_id]

        if not isinstance(payload, dict):
            return web.json_response({"error": "body is not a JSON object"}, status=400)
        failure = await self._inject_fault(request, attempt)
        if failure is not None:
            self.failures_injected += 1
            return failure

        # No await between the check and the append: concurrent retries of one id cannot both
        # record.
        if webhook_id in self._applied:
            self.duplicates_suppressed += 1
            return web.json_response({"status": "duplicate"})
        self._applied.add(webhook_id)
        data = payload.get("data") or {}
        order_id = data.get("id")
        version = data.get("version")
        self.ledger.append(
            LedgerEntry(
                webhook_id=webhook_id,
                type=str(payload.get("type")),
                order_id=None if order_id is None else str(order_id),
                version=None if version is None else int(version),
                received_at=time.monotonic(),
                webhook_timestamp=int(float(request.headers["webhook-timestamp"])),
                attempt=attempt,
                data=data,
            )
        )
        return web.json_response({"status": "applied"})

    async def _inject_fault(self, request: web.Request, attempt: int) -> web.Response | None:
        """Delay, fail or hang this attempt as the plan says; None lets it through."""
        plan = self.faults
        low, high = plan.latency
        if high > 0:
            await asyncio.sleep(self._rng.uniform(low, high))
        if attempt <= plan.fail_first:
            return web.json_response({"error": "injected: first attempts fail"}, status=503)
        if self._rng.random() < plan.error_rate:
            return web.json_response({"error": "injected: server error"}, status=500)
        if self._rng.random() < plan.timeout_rate:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), plan.hang_seconds)
            # Record only if the sender is still waiting: a sender that timed out will retry,
            # and an effect it never saw acknowledged must not be counted as applied.
            transport = request.transport
            if self._stopping.is_set() or transport is None or transport.is_closing():
                return web.Response(status=504)
        return None

    async def _dump(self, request: web.Request) -> web.Response:
        body = {**self.stats(), "ledger": [asdict(entry) for entry in self.ledger]}
        return web.json_response(body, dumps=lambda obj: json.dumps(obj, default=str))

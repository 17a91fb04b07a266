"""Compare what the sinks applied with what the hub holds: lost, duplicated, out of order.

Used by the demo, the end-to-end tests and the benchmarks, over the hub's public API only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any

import aiohttp

from ordersync.simulators.shopify_store import StoreReport
from ordersync.simulators.sinks import Sink


class HubClient:
    """The few API calls the checks need."""

    def __init__(self, base_url: str, api_key: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self._session = session
        self._headers = {"Authorization": f"Bearer {api_key}"}

    async def get(self, path: str, **params: Any) -> Any:
        q = {k: v for k, v in params.items() if v is not None}
        async with self._session.get(
            f"{self.base_url}{path}", params=q, headers=self._headers
        ) as r:
            r.raise_for_status()
            return await r.json()

    async def all_pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.get(path, limit=500, cursor=cursor, **params)
            out.extend(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                return out

    async def pending_deliveries(self) -> int:
        summary = await self.get("/v1/deliveries/summary")
        return sum(states.get("pending", 0) for states in summary.values())

    async def metric(self, name: str) -> dict[str, float]:
        """Samples of one Prometheus metric, keyed by their label string."""
        async with self._session.get(f"{self.base_url}/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(name):
                key, _, value = line.rpartition(" ")
                out[key[len(name) :]] = float(value)
        return out


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < 20:
            self.problems.append(f"{kind}: {text}")


_EXPECTED_STATUS = {"cancelled": "cancelled", "fulfilled": "shipped"}


def expected_status(shopify_order: dict[str, Any]) -> str:
    if shopify_order.get("cancelled_at"):
        return "cancelled"
    if shopify_order.get("fulfillment_status") == "fulfilled":
        return "shipped"
    if shopify_order.get("financial_status") in ("paid", "authorized", "partially_refunded"):
        return "paid"
    return "pending"


def verify(
    store: StoreReport,
    hub_orders: list[dict[str, Any]],
    hub_deliveries: list[dict[str, Any]],
    sinks: dict[str, Sink],
) -> Verdict:
    v = Verdict()
    by_external = {o["external_id"]: o for o in hub_orders}
    # 1. Every order (and its latest accepted state) that got a 2xx is in the hub.
    for ext_id, accepted in store.accepted_orders.items():
        order = by_external.get(ext_id)
        if order is None:
            v.note("lost", f"order {ext_id} was accepted but is not in the hub")
            continue
        want_updated = datetime.fromisoformat(accepted.last_state["updated_at"])
        got = order.get("channel_updated_at")
        if got is None or datetime.fromisoformat(got) != want_updated:
            v.note(
                "lost", f"order {ext_id}: latest accepted update {want_updated} not applied ({got})"
            )
        elif order["status"] != expected_status(accepted.last_state):
            want = expected_status(accepted.last_state)
            v.note("lost", f"order {ext_id}: status {order['status']} != {want}")
    # 2. Every delivery the hub owes a sink reached it; nothing applied twice; in order.
    owed: dict[str, set[str]] = {}
    for d in hub_deliveries:
        owed.setdefault(d["destination_id"], set()).add(d["event_id"])
    for name, sink in sinks.items():
        got_ids = Counter(e.webhook_id for e in sink.ledger)
        for event_id in owed.get(name, set()) - set(got_ids):
            v.note("lost", f"{name} never applied event {event_id}")
        for event_id, n in got_ids.items():
            if n > 1:
                v.note("duplicated", f"{name} applied event {event_id} {n} times")
        changes = Counter((e.order_id, e.version, e.type) for e in sink.ledger)
        for key, n in changes.items():
            if n > 1:
                v.note("duplicated", f"{name} applied {key} {n} times under different ids")
        for order_id, entries in sink.applied_by_order().items():
            versions = [e.version or 0 for e in entries]
            if any(b < a for a, b in pairwise(versions)):
                v.note("out_of_order", f"{name} got order {order_id} versions {versions}")
    return v

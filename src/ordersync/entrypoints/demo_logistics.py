"""The demo's logistics leg: book the paid orders, track them to delivered, alert on stale.

The carrier simulator plays Kdniao, Kuaidi100 and a generic REST carrier. Each paid order
of the demo store is booked through the hub's API (the carriers in turn), then its parcel
is driven through a sample journey (pickup, transit, out for delivery, delivered) by
signed callbacks in the carrier's own format. A share of the parcels (`stale_share`) is
never picked up. The hub's no-pickup rule (48 h in production) is set to a few seconds in
the demo's config, so its durable timer raises an alert for each of those while the demo
watches. A share of the delivered orders (`return_share`) is then sent back: the hub books
the reverse pickup, the carrier drives it to the warehouse, and the hub restocks and
refunds. The check: every other parcel delivered, exactly one alert per stale parcel, none
for the others, every return received with the refund its line totals add up to.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp

from ordersync.simulators.carriers import SAMPLE_JOURNEYS, CarrierSimulator

# carrier id -> (simulated format, the real carrier's code in that aggregator)
CARRIERS: dict[str, tuple[str, str]] = {
    "kdniao-sf": ("kdniao", "SF"),
    "kuaidi100-yt": ("kuaidi100", "yuantong"),
    "generic-post": ("generic", "USPS"),
}
ALERT_STATES = ("open", "acknowledged", "resolved")


@dataclass(frozen=True)
class LogisticsPlan:
    stale_share: float = 0.1  # parcels never picked up
    stale_after: float = 10.0  # seconds: the demo's no-pickup threshold (48 h in production)
    # Paid orders booked at most (a sample beyond): a larger run would only make the demo
    # longer.
    max_parcels: int = 300
    # Parcels in flight at once. The hub records the callbacks arriving together in one
    # transaction and applies a batch of shipments per transaction right after (woken by
    # the insert, never waiting for the sweep), so pickups do not queue long enough for
    # the no-pickup timer (`stale_after`) to fire falsely.
    concurrency: int = 16
    return_share: float = 0.05  # delivered orders sent back whole (at least one)
    seed: int = 6


@dataclass
class Parcel:
    order_id: str
    carrier_id: str
    shipment_id: str
    tracking_number: str
    stale: bool
    status: str = "pending"
    alerts: list[str] = field(default_factory=list)  # rules raised for it
    direction: str = "outbound"  # or "return": a reverse pickup


@dataclass
class ReturnCheck:
    return_id: str
    order_id: str
    refund: Decimal  # what the returned lines' totals add up to
    status: str = "pickup_booked"
    refunded: Decimal | None = None
    payment_status: str | None = None  # None: never captured, so nothing was paid back


@dataclass
class LogisticsReport:
    parcels: list[Parcel] = field(default_factory=list)
    returns: list[ReturnCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def outbound(self) -> list[Parcel]:
        return [p for p in self.parcels if p.direction == "outbound"]

    def rows(self) -> list[dict[str, Any]]:
        """One row per carrier, then the total."""
        out = []
        for carrier_id in [*CARRIERS, "total"]:
            mine = [p for p in self.parcels if carrier_id in ("total", p.carrier_id)]
            out.append(
                {
                    "carrier": carrier_id,
                    "booked": sum(p.direction == "outbound" for p in mine),
                    "delivered": sum(
                        p.direction == "outbound" and p.status == "delivered" for p in mine
                    ),
                    "stale": sum(p.stale for p in mine),
                    "alerts": sum(len(p.alerts) for p in mine),
                    "returned": sum(
                        p.direction == "return" and p.status == "delivered" for p in mine
                    ),
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        outbound = self.outbound
        return {
            "shipments_booked": len(outbound),
            "shipments_delivered": sum(p.status == "delivered" for p in outbound),
            "shipments_stale": sum(p.stale for p in outbound),
            "alerts_raised": sum(len(p.alerts) for p in self.parcels),
            "returns_booked": len(self.returns),
            "returns_received": sum(r.status == "received" for r in self.returns),
            "refunded_total": str(
                sum((r.refunded or 0 for r in self.returns if r.payment_status), Decimal(0))
            ),
            "logistics_elapsed_s": round(self.elapsed_s, 2),
            "logistics_problems": len(self.problems),
        }


class LogisticsDriver:
    def __init__(self, plan: LogisticsPlan) -> None:
        self.plan = plan
        self.sim = CarrierSimulator()

    async def start(self) -> None:
        await self.sim.start()

    async def stop(self) -> None:
        await self.sim.stop()

    def config(self) -> dict[str, Any]:
        """The hub config's `carriers` and `alerts` blocks."""
        sim = self.sim
        credentials = {
            "kdniao": {"ebusiness_id": sim.kdniao.ebusiness_id, "app_key": sim.kdniao.app_key},
            "kuaidi100": {
                "key": sim.kuaidi100.key,
                "secret": sim.kuaidi100.secret,
                "salt": "demo-salt-5e1",
            },
            "generic": {
                "api_key": sim.generic.api_key,
                "webhook_secret": sim.generic.webhook_secret,
            },
        }
        return {
            "carriers": [
                {
                    "id": carrier_id,
                    "kind": kind,
                    "endpoint": sim.endpoint(kind),
                    "credentials": credentials[kind],
                    "carrier_code": code,
                }
                for carrier_id, (kind, code) in CARRIERS.items()
            ],
            "alerts": {"no_pickup": {"hours": self.plan.stale_after / 3600}},
        }

    async def run(
        self, hub_url: str, api_key: str, session: aiohttp.ClientSession, order_ids: list[str]
    ) -> LogisticsReport:
        """Book every order, drive the parcels, wait for the outcome, check it."""
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {api_key}"}
        rng = random.Random(self.plan.seed)
        if len(order_ids) > self.plan.max_parcels:
            order_ids = sorted(rng.sample(order_ids, self.plan.max_parcels))
        stale = set(rng.sample(order_ids, round(len(order_ids) * self.plan.stale_share)))
        report = LogisticsReport()
        gate = asyncio.Semaphore(self.plan.concurrency)
        carrier_ids = list(CARRIERS)

        async def one(i: int, order_id: str) -> None:
            carrier_id = carrier_ids[i % len(carrier_ids)]
            async with gate:
                parcel = await self._book(hub_url, headers, session, order_id, carrier_id, report)
                if parcel is None:
                    return
                parcel.stale = order_id in stale
                report.parcels.append(parcel)
                if not parcel.stale:
                    await self._drive(hub_url, session, parcel, report)

        await asyncio.gather(*(one(i, o) for i, o in enumerate(order_ids)))
        booked_by = time.monotonic()
        await self._await_outcome(hub_url, headers, session, report, booked_by)
        delivered = [p for p in report.outbound if p.status == "delivered"]
        if delivered and self.plan.return_share > 0:
            count = max(1, round(len(delivered) * self.plan.return_share))
            back = rng.sample(delivered, min(count, len(delivered)))

            async def send_back(parcel: Parcel) -> None:
                async with gate:
                    await self._send_back(hub_url, headers, session, parcel, report)

            await asyncio.gather(*(send_back(p) for p in back))
            # The stale threshold has passed already: wait for the reverse parcels only.
            since = time.monotonic() - self.plan.stale_after
            await self._await_outcome(hub_url, headers, session, report, since)
            await self._await_returns(hub_url, headers, session, report)
        self._check(report)
        report.elapsed_s = time.monotonic() - started
        return report

    async def _send_back(
        self,
        hub_url: str,
        headers: dict[str, str],
        session: aiohttp.ClientSession,
        parcel: Parcel,
        report: LogisticsReport,
    ) -> None:
        """Return the whole order: the hub books the reverse pickup, the carrier drives it."""
        async with session.get(f"{hub_url}/v1/orders/{parcel.order_id}", headers=headers) as r:
            order = await r.json()
        lines = [x for x in order["lines"] if x.get("sku") and x["quantity"] > 0]
        if not lines:
            return  # nothing with a SKU to send back
        async with session.post(
            f"{hub_url}/v1/orders/{parcel.order_id}/returns",
            json={
                "lines": [{"sku": x["sku"], "quantity": x["quantity"]} for x in lines],
                "reason": "demo: does not fit",
                "carrier_id": parcel.carrier_id,
            },
            headers=headers,
        ) as r:
            body = await r.json(content_type=None)
            if r.status != 201:
                report.problems.append(f"return of {parcel.order_id}: {r.status} {body}")
                return
        refund = sum((Decimal(x["total"]) for x in lines), Decimal(0))
        report.returns.append(ReturnCheck(body["id"], parcel.order_id, refund))
        reverse = Parcel(
            parcel.order_id,
            parcel.carrier_id,
            body["shipment_id"],
            body["tracking_number"],
            stale=False,
            direction="return",
        )
        report.parcels.append(reverse)
        await self._drive(hub_url, session, reverse, report)

    async def _await_returns(
        self,
        hub_url: str,
        headers: dict[str, str],
        session: aiohttp.ClientSession,
        report: LogisticsReport,
        timeout: float = 60.0,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for check in report.returns:
                if check.status == "received":
                    continue
                async with session.get(
                    f"{hub_url}/v1/returns/{check.return_id}", headers=headers
                ) as r:
                    got = await r.json()
                check.status = got["status"]
                amount = got.get("refund_amount")
                check.refunded = None if amount is None else Decimal(amount)
                check.payment_status = got.get("payment_status")
            if all(c.status == "received" for c in report.returns):
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)

    async def _book(
        self,
        hub_url: str,
        headers: dict[str, str],
        session: aiohttp.ClientSession,
        order_id: str,
        carrier_id: str,
        report: LogisticsReport,
    ) -> Parcel | None:
        async with session.post(
            f"{hub_url}/v1/orders/{order_id}/shipments",
            json={"carrier_id": carrier_id},
            headers=headers,
        ) as r:
            body = await r.json(content_type=None)
            if r.status != 201:
                report.problems.append(f"booking {order_id} with {carrier_id}: {r.status} {body}")
                return None
        return Parcel(order_id, carrier_id, body["id"], body["tracking_number"], stale=False)

    async def _drive(
        self,
        hub_url: str,
        session: aiohttp.ClientSession,
        parcel: Parcel,
        report: LogisticsReport,
    ) -> None:
        """The sample journey, one signed full snapshot per scan (as the carriers push)."""
        kind = CARRIERS[parcel.carrier_id][0]
        base = datetime.now(UTC)
        url = f"{hub_url}/v1/carriers/{parcel.carrier_id}/callbacks"
        for hours, code, text, place in SAMPLE_JOURNEYS[kind]:
            # The journey compressed: its hours pass as minutes of carrier time.
            self.sim.add_trace(
                parcel.tracking_number, code, text, base + timedelta(minutes=hours), place
            )
            body, push_headers = self.sim.push_body(parcel.tracking_number)
            async with session.post(url, data=body, headers=push_headers) as r:
                if r.status != 200:
                    report.problems.append(
                        f"{parcel.carrier_id} push for {parcel.tracking_number}: {r.status}"
                        f" {await r.text()}"
                    )
                    return

    async def _await_outcome(
        self,
        hub_url: str,
        headers: dict[str, str],
        session: aiohttp.ClientSession,
        report: LogisticsReport,
        booked_by: float,
    ) -> None:
        """Poll until every driven parcel is delivered and every stale one alerted (and the
        threshold has passed for all), or the deadline."""
        deadline = booked_by + self.plan.stale_after + 60.0
        by_shipment = {p.shipment_id: p for p in report.parcels}
        while True:
            waiting = [p for p in report.parcels if not p.stale and p.status != "delivered"]
            for p in waiting:
                async with session.get(
                    f"{hub_url}/v1/orders/{p.order_id}/shipments", headers=headers
                ) as r:
                    for s in (await r.json())["data"]:
                        if s["id"] == p.shipment_id:
                            p.status = s["status"]
            params = [("state", s) for s in ALERT_STATES] + [("limit", "1000")]
            async with session.get(f"{hub_url}/v1/alerts", params=params, headers=headers) as r:
                alerts = (await r.json())["data"]
            for p in report.parcels:
                p.alerts = []
            for a in alerts:
                if (alerted_parcel := by_shipment.get(a["shipment_id"])) is not None:
                    alerted_parcel.alerts.append(a["rule"])
            delivered = all(p.status == "delivered" for p in report.parcels if not p.stale)
            alerted = all(p.alerts for p in report.parcels if p.stale)
            settled = time.monotonic() > booked_by + self.plan.stale_after
            if (delivered and alerted and settled) or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)

    @staticmethod
    def _check(report: LogisticsReport) -> None:
        for c in report.returns:
            if c.status != "received" or c.refunded != c.refund:
                report.problems.append(
                    f"return {c.return_id} of {c.order_id}: {c.status}, refunded"
                    f" {c.refunded} (expected {c.refund})"
                )
        for p in report.parcels:
            if p.stale and len(p.alerts) != 1:
                report.problems.append(
                    f"stale parcel {p.tracking_number} ({p.carrier_id}) has alerts {p.alerts}"
                )
            if not p.stale and p.status != "delivered":
                report.problems.append(
                    f"parcel {p.tracking_number} ({p.carrier_id}) is {p.status}, not delivered"
                )
            if not p.stale and p.alerts:
                report.problems.append(
                    f"parcel {p.tracking_number} ({p.carrier_id}) was picked up yet has"
                    f" alerts {p.alerts}"
                )

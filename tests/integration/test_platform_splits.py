"""Platform-side splits and merges never duplicate hub orders: one hub order per Taobao tid,
whether the trade is consigned in parts (sub-orders shipped apart), merged with other trades
into one parcel, read twice by overlapping windows, sent as `tid` or `tid_str`, or applied
twice in one group commit. Over loopback HTTP from the TOP simulator into a real hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from ordersync.adapters.channels import taobao as top_api
from ordersync.domain.commands import IngestChannelOrder
from ordersync.service.pull import state_message_id
from ordersync.simulators.taobao_top import TopGateway, make_trade
from ordersync.testing.pull_rig import PullRig, pull_rigs

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
TOP_KEY, TOP_SECRET, TOP_SESSION = "12345678", "top-secret-longjing", "6100e2a9"
CHANNEL = "tmall-flagship"


def top_channel(gateway: str) -> dict[str, Any]:
    return {
        "id": CHANNEL,
        "kind": "taobao",
        "app_key": TOP_KEY,
        "app_secret": TOP_SECRET,
        "session": TOP_SESSION,
        "format": "json",
        "sign_method": "hmac",
        "gateway": gateway,
        "pull": {"overlap": 60, "page_size": 3, "max_window": 600, "settle": 2},
    }


@pytest.fixture
async def top() -> AsyncIterator[TopGateway]:
    gateway = TopGateway(app_key=TOP_KEY, app_secret=TOP_SECRET, session=TOP_SESSION)
    await gateway.start()
    yield gateway
    await gateway.stop()


@pytest.fixture
async def rig(database_url: str, top: TopGateway) -> AsyncIterator[PullRig]:
    async with pull_rigs(database_url, start=T0) as make:
        made = await make(top_channel(top.url))
        top.clock = made.clock
        yield made


def teacups(*oids: int) -> list[dict[str, Any]]:
    return [
        {
            "oid": oid,
            "title": "青瓷茶杯",
            "num": 1,
            "price": "30.00",
            "payment": "30.00",
            "outer_sku_id": f"TEA-CUP-{i}",
            "refund_status": "NO_REFUND",
        }
        for i, oid in enumerate(oids, start=1)
    ]


def consign(trade: dict[str, Any], *positions: int, waybill: str) -> dict[str, Any]:
    """The trade's `orders` with the sub-orders at `positions` consigned under `waybill`."""
    subs = [dict(s) for s in trade["orders"]["order"]]
    for i in positions:
        subs[i] |= {"consign_time": top_api.top_time(T0), "invoice_no": waybill}
    return {"order": subs}


async def pull_now(rig: PullRig, seconds: float = 120) -> None:
    """Let `seconds` pass (beyond the settle time), then read everything up to now."""
    rig.clock.tick(seconds)
    await rig.puller(CHANNEL).catch_up()


async def test_a_trade_consigned_in_parts_stays_one_hub_order(
    rig: PullRig, top: TopGateway
) -> None:
    """Paid, one teacup shipped (SELLER_CONSIGNED_PART), then both: one order, two lines."""
    rig.clock.tick(-900)
    trade = top.create(subs=teacups(101, 102))
    tid = trade["tid"]
    await pull_now(rig)

    top.update(tid, status="SELLER_CONSIGNED_PART", orders=consign(trade, 0, waybill="SF100"))
    await pull_now(rig)
    top.update(tid, status="WAIT_BUYER_CONFIRM_GOODS", orders=consign(trade, 0, 1, waybill="SF100"))
    await pull_now(rig)

    rows = await rig.rows(CHANNEL)  # fails if a tid is stored twice
    assert list(rows) == [str(tid)]
    order = rows[str(tid)]
    assert (order.status, order.payment_status) == ("shipped", "paid")
    assert [line["external_id"] for line in order.doc["lines"]] == ["101", "102"]


async def test_trades_merged_into_one_parcel_stay_their_own_orders(
    rig: PullRig, top: TopGateway
) -> None:
    """Two trades of one buyer shipped together (合并发货): two orders, never a third."""
    rig.clock.tick(-900)
    first = top.create(subs=teacups(201))
    second = top.create(subs=teacups(301, 302))
    await pull_now(rig)

    for trade in (first, second):
        positions = range(len(trade["orders"]["order"]))
        merged = consign(trade, *positions, waybill="SF-MERGED-1")
        top.update(trade["tid"], status="WAIT_BUYER_CONFIRM_GOODS", orders=merged)
    await pull_now(rig)

    rows = await rig.rows(CHANNEL)
    assert set(rows) == {str(first["tid"]), str(second["tid"])}
    assert [len(rows[str(t["tid"])].doc["lines"]) for t in (first, second)] == [1, 2]
    assert {o.status for o in rows.values()} == {"shipped"}


async def test_a_trade_read_by_overlapping_windows_and_as_tid_str_is_one_order(
    rig: PullRig, top: TopGateway
) -> None:
    """The next window re-reads the trade (overlap), now with tid_str: still one order."""
    rig.clock.tick(-900)
    trade = top.create()
    await pull_now(rig, 30)

    top.put({**top.trades[trade["tid"]], "tid_str": str(trade["tid"])})
    await pull_now(rig, 30)

    assert list(await rig.rows(CHANNEL)) == [str(trade["tid"])]


async def test_two_states_of_one_trade_in_one_group_commit_make_one_order(
    rig: PullRig,
) -> None:
    """Paid and shipped states of a new trade ingested at once: created once, then updated."""
    tid = 4_611_686_018_427_387_905
    paid = make_trade(tid, T0, subs=teacups(1))
    shipped = make_trade(tid, T0.replace(minute=5), status="WAIT_BUYER_CONFIRM_GOODS")
    commands = []
    for trade in (paid, shipped):
        snap = top_api.map_trade(CHANNEL, trade)
        commands.append(
            IngestChannelOrder(
                channel_id=CHANNEL,
                kind="taobao",
                message_id=state_message_id(str(tid), snap.channel_updated_at, snap),
                topic="pull",
                snapshot=snap,
                received_at=T0,
            )
        )

    results = await asyncio.gather(*(rig.hub.handle(c) for c in commands))

    assert sorted(r.outcome for r in results) == ["created", "updated"]
    assert len({r.order_id for r in results}) == 1
    rows = await rig.rows(CHANNEL)
    assert list(rows) == [str(tid)]
    assert rows[str(tid)].status == "shipped"

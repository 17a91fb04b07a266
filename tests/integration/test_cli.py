"""The operator verbs of the `ordersync` command, run as real processes against the database
of a running hub (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from ordersync.bootstrap import Hub
from ordersync.simulators.sinks import FaultPlan

from .conftest import Settle, Sinks


async def ordersync(config: Path, *args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ordersync",
        *args,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out + err


def doormat(external_id: str) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "currency": "GBP",
        "totals": {"total": "19.99"},
        "lines": [{"sku": "DOORMAT-GREY", "quantity": 1, "unit_price": "19.99"}],
    }


async def test_an_operator_lists_dead_letters_and_replays_them_from_the_command_line(
    hub: Hub, api: httpx.AsyncClient, sinks: Sinks, settle: Settle, tmp_path: Path
) -> None:
    """`dlq list --json` shows the dead CRM delivery; `dlq replay` sends it again, and it lands."""
    config = tmp_path / "ops.yaml"
    config.write_text(yaml.safe_dump({"database_url": hub.settings.database_url}))
    sinks.crm.faults = FaultPlan(error_rate=1.0)
    created = await api.post("/v1/orders", json=doormat("CLI-DLQ-1"))
    await settle(api)

    rc_list, listed = await ordersync(config, "dlq", "list", "--json")
    rc_orders, orders = await ordersync(config, "orders", "list", "--json")
    sinks.crm.faults = FaultPlan()
    rc_replay, replayed = await ordersync(config, "dlq", "replay", "--destination", "crm")
    hub.dispatcher.wake()
    await settle(api)
    rc_summary, summary = await ordersync(config, "deliveries", "summary", "--json")

    assert (rc_list, rc_orders, rc_replay, rc_summary) == (0, 0, 0, 0)
    dead = orjson.loads(listed)
    assert [(d["destination_id"], d["event_type"]) for d in dead] == [("crm", "order.created")]
    assert [o["id"] for o in orjson.loads(orders)] == [created.json()["id"]]
    assert b"queued 1 dead-lettered deliveries again" in replayed
    crm = next(row for row in orjson.loads(summary) if row["destination"] == "crm")
    assert (crm["dead"], crm["pending"], crm["succeeded"]) == (0, 0, 1)
    assert len(sinks.crm.ledger) == 1


async def test_replaying_an_unknown_delivery_from_the_command_line_fails_clearly(
    hub: Hub, tmp_path: Path
) -> None:
    """A delivery id the hub never issued: exit code 1 and a message, nothing changed."""
    config = tmp_path / "ops.yaml"
    config.write_text(yaml.safe_dump({"database_url": hub.settings.database_url}))

    rc, out = await ordersync(config, "replay", "dlv_424242")

    assert rc == 1
    assert b"dlv_424242" in out


async def test_a_bad_config_stops_the_command_with_the_path_of_the_bad_key(
    tmp_path: Path,
) -> None:
    """`destinations[0].secret` must be a whsec_ secret: the error names that key."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump({"destinations": [{"id": "erp", "url": "http://x", "secret": "nope"}]})
    )

    rc, out = await ordersync(config, "migrate")

    assert rc == 2
    assert b"destinations[0].secret" in out

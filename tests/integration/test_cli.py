"""The operator verbs of the `ordersync` command against the database of a running hub
(SQLite and PostgreSQL), run in this process by `run_cli`.

One real `python -m ordersync` child per command is kept across the suite, so the entry
point itself stays proven: here `replay` and `orders list` (on SQLite); `dlq list`,
`dlq replay` and `deliveries summary` run as processes in
tests/contract/test_delivery_contract.py, and `migrate` (good and bad config) in
tests/e2e/test_cli_runner.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from ordersync.bootstrap import Hub
from ordersync.simulators.sinks import FaultPlan
from ordersync.testing.cli import run_cli, run_process

from .conftest import Settle, Sinks


async def ordersync(config: Path, *args: str) -> tuple[int, bytes]:
    return await run_cli(*args, "--config", str(config))


async def ordersync_process(config: Path, *args: str) -> tuple[int, bytes]:
    code, out, err = await run_process(*args, "--config", str(config))
    return code, out + err


def on_sqlite(hub: Hub) -> bool:
    return hub.settings.database_url.startswith("sqlite")


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
    # The real process for `orders list`, once (the PostgreSQL run goes in-process).
    list_orders = ordersync_process if on_sqlite(hub) else ordersync
    rc_orders, orders = await list_orders(config, "orders", "list", "--json")
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

    # The real process for `replay`, once (the PostgreSQL run goes in-process).
    replay = ordersync_process if on_sqlite(hub) else ordersync
    rc, out = await replay(config, "replay", "dlv_424242")

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

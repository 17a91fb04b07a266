"""The `ordersync` command: serve, migrate, demo, and operator verbs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from ordersync.config import ConfigError, Settings, load_settings

app = typer.Typer(help="ordersync: order synchronization hub.", no_args_is_help=True)
orders_app = typer.Typer(help="Inspect orders.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Inspect deliveries.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-lettered deliveries: list and replay.", no_args_is_help=True)
app.add_typer(orders_app, name="orders")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(dlq_app, name="dlq")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (or $ORDERSYNC_CONFIG).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as e:
        err.print(f"[red]config error:[/red] {e}")
        raise typer.Exit(2) from None


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(coro_fn())
    result: T = uvloop.run(coro_fn())
    return result


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    api_only: Annotated[
        bool,
        typer.Option(help="Leave deliveries to `ordersync worker` (implied with a broker)."),
    ] = False,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            "-p",
            help="API processes sharing the port (SO_REUSEPORT); more than 1 needs PostgreSQL.",
            min=1,
        ),
    ] = 1,
    reuse_port: Annotated[
        bool, typer.Option("--reuse-port", hidden=True, help="Internal: a supervised child.")
    ] = False,
) -> None:
    """Run the API; without a broker also the delivery workers (embedded default)."""
    settings = _settings(config)
    _setup_logging(settings.log_level)
    if processes > 1:
        raise typer.Exit(_supervise_serve(settings, config, host, port, api_only, processes))

    import uvicorn

    from ordersync.bootstrap import Role, build_hub
    from ordersync.entrypoints.api.app import create_app

    hub = build_hub(settings, Role.API if api_only else None)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # Uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the
            # process would die "killed by signal" (-15) although it drained cleanly.
            # A drained SIGTERM is a clean stop: exit 0, as supervisors expect.
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    server_config = uvicorn.Config(
        create_app(hub),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
        backlog=2048,
        proxy_headers=False,  # no proxy in front by default; saves a middleware per request
    )
    if reuse_port:
        Server(server_config).run(sockets=[_reuse_port_socket(host, port)])
    else:
        Server(server_config).run()


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that other processes may bind too: the kernel spreads
    new connections across all of them (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def _supervise_serve(
    settings: Settings, config: Path | None, host: str, port: int, api_only: bool, processes: int
) -> int:
    """`serve --processes N`: N single-process `serve --reuse-port` children on one port."""
    from ordersync.entrypoints.worker import supervise_processes

    if settings.database_url.startswith("sqlite"):
        err.print(
            "[red]serve --processes N (N > 1) needs PostgreSQL:[/red] an SQLite database has"
            " one writer, so several API processes would only contend for it. Use"
            " --processes 1, or a postgresql:// database_url."
        )
        return 2
    try:  # fail once, here, rather than in a restart loop of children
        _reuse_port_socket(host, port).close()
    except OSError as e:
        err.print(f"[red]cannot bind {host}:{port}:[/red] {e}")
        return 1
    cmd = [sys.executable, "-m", "ordersync", "serve", "--processes", "1", "--reuse-port"]
    cmd += ["--host", host, "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config)]
    if api_only:
        cmd.append("--api-only")
    return supervise_processes(cmd, processes, own_process_group=True, name="serve")


@app.command()
def worker(
    config: ConfigOpt = None,
    processes: Annotated[
        int, typer.Option("--processes", "-p", help="Worker processes on this machine.", min=1)
    ] = 1,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics of all these processes on this port.")
    ] = None,
) -> None:
    """Run delivery workers (relay, broker consumer, sweeper) without the API."""
    from ordersync.entrypoints.worker import run_worker, supervise

    settings = _settings(config)
    _setup_logging(settings.log_level)
    if processes > 1 or (metrics_port is not None and "PROMETHEUS_MULTIPROC_DIR" in os.environ):
        raise typer.Exit(supervise(config, processes, metrics_port))
    _run(lambda: run_worker(settings, metrics_port=metrics_port))


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply database migrations."""
    from ordersync.adapters.db import migrate as m
    from ordersync.adapters.db.database import Database, redact

    settings = _settings(config)

    async def go() -> str | None:
        db = Database(settings.database_url)
        try:
            await m.upgrade(db)
            return await m.current(db)
        finally:
            await db.dispose()

    rev = _run(go)
    console.print(f"database {redact(settings.database_url)} at revision {rev}")


@app.command()
def demo(
    orders: Annotated[int, typer.Option(help="Orders the simulated Shopify store creates.")] = 500,
    faults: Annotated[bool, typer.Option(help="Inject sink errors, timeouts and latency.")] = False,
    json_out: JsonOpt = False,
    port: Annotated[int, typer.Option(help="Hub port (0 picks a free one).")] = 0,
    keep: Annotated[bool, typer.Option(help="Keep the demo's working directory.")] = False,
    channels: Annotated[
        str,
        typer.Option(
            help="Sales channels, comma-separated: shopify (always), woocommerce (push),"
            " taobao (pulled through the TOP gateway simulator)."
        ),
    ] = "shopify",
    logistics: Annotated[
        bool,
        typer.Option(
            help="Book the paid orders with simulated carriers (Kdniao, Kuaidi100, generic)"
            " and track them to delivered by signed callbacks."
        ),
    ] = True,
    stale_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of parcels never picked up (each must raise an alert)."
        ),
    ] = 0.1,
    stale_after: Annotated[
        float,
        typer.Option(min=0.5, help="The demo's no-pickup alert threshold, in seconds (48 h live)."),
    ] = 10.0,
) -> None:
    """Start the hub and simulators, push orders through, and check nothing was lost."""
    from ordersync.entrypoints.demo import run_demo
    from ordersync.entrypoints.demo_logistics import LogisticsPlan

    kinds = [c.strip() for c in channels.split(",") if c.strip()]
    plan = LogisticsPlan(stale_share, stale_after) if logistics else None
    summary = _run(
        lambda: run_demo(
            orders=orders,
            faults=faults,
            quiet=json_out,
            port=port,
            keep=keep,
            channels=kinds,
            logistics=plan,
        )
    )
    if json_out:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    if summary["lost"] or summary["duplicated"] or summary["out_of_order"]:
        raise typer.Exit(1)
    if summary.get("logistics_problems"):
        raise typer.Exit(1)


@app.command()
def backfill(
    channel: Annotated[str, typer.Option("--channel", help="Channel id (with a pull block).")],
    since: Annotated[
        str | None,
        typer.Option("--since", help="RFC 3339 time (UTC if no offset) to pull from."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the last backfill where it stopped.")
    ] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pull a channel's orders modified since T, up to now (resumable with --resume)."""
    from datetime import UTC, datetime

    from ordersync.adapters.channels.pulling import HttpFetch, puller_for
    from ordersync.adapters.db.pull_cursors import SqlCursorStore
    from ordersync.bootstrap import Role, build_hub
    from ordersync.service.pull import PullStats

    settings = _settings(config)
    _setup_logging("WARNING" if json_out else settings.log_level)
    chosen = settings.channel(channel)
    if chosen is None or chosen.pull is None:
        err.print(f"[red]channel {channel!r} is not configured with a pull block[/red]")
        raise typer.Exit(2)
    start: datetime | None = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            err.print(f"[red]--since {since!r} is not an RFC 3339 time[/red]")
            raise typer.Exit(2) from None
        start = start.replace(tzinfo=UTC) if start.utcoffset() is None else start.astimezone(UTC)
    elif not resume:
        err.print("[red]give --since T, or --resume to continue the last backfill[/red]")
        raise typer.Exit(2)

    async def go() -> PullStats:
        hub = build_hub(settings, Role.API)  # ingest only: running hubs deliver the events
        await hub.start(dispatch=False, pull=False)
        fetch = HttpFetch()
        try:
            puller = puller_for(chosen, fetch, SqlCursorStore(hub.db), hub.handle, name="backfill")
            if start is not None and not resume:
                await puller.start_at(start)
            with console.status(f"backfilling {channel}") as status:

                def progress(stats: PullStats) -> None:
                    status.update(
                        f"backfilling {channel}: {stats.windows} windows,"
                        f" {stats.pages} pages, {stats.orders} orders"
                    )

                return await puller.catch_up(on_page=progress)
        finally:
            await fetch.close()
            await hub.stop()

    stats = _run(go)
    row = {
        "channel": channel,
        "windows": stats.windows,
        "pages": stats.pages,
        "orders": stats.orders,
        "throttled": stats.throttled,
        **{f"outcome_{k}": v for k, v in sorted(stats.outcomes.items())},
    }
    _emit([row], list(row), "backfill", json_out)


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="The file to import (CSV, XLSX, JSON or XML).")],
    channel: Annotated[str, typer.Option("--channel", help="A channel of kind generic.")],
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="Mapping file (default: the channel's).")
    ] = None,
    on_error: Annotated[
        str,
        typer.Option(
            "--on-error",
            help="reject-file: import nothing if any row is bad (exit 1); skip-bad-rows:"
            " import the good orders, report the bad rows (exit 0); reject-bad-rows: import"
            " the good orders and record the bad ones as rejected in the inbox (exit 1).",
        ),
    ] = "reject-file",
    sheet: Annotated[
        str | None, typer.Option("--sheet", help="XLSX: the sheet to read (default: the first).")
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bulk-import orders from a file through the same ingest path as webhooks."""
    import dataclasses

    from ordersync.adapters.channels import generic
    from ordersync.adapters.channels.base import statuses_for
    from ordersync.bootstrap import Role, build_hub
    from ordersync.clock import utcnow
    from ordersync.config import GenericChannel
    from ordersync.domain.commands import IngestChannelOrder

    settings = _settings(config)
    _setup_logging("WARNING")
    if on_error not in generic.IMPORT_POLICIES:
        err.print(f"[red]--on-error must be one of {', '.join(generic.IMPORT_POLICIES)}[/red]")
        raise typer.Exit(2)
    chosen = settings.channel(channel)
    if not isinstance(chosen, GenericChannel):
        err.print(f"[red]channel {channel!r} is not configured as a generic channel[/red]")
        raise typer.Exit(2)
    if file.suffix.lower() == ".xls":
        err.print("[red]old .xls workbooks are not supported; save the sheet as .xlsx[/red]")
        raise typer.Exit(2)
    try:
        spec = generic.load_mapping(mapping or chosen.mapping)
        body = file.read_bytes()
    except (generic.MappingFileError, OSError) as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if file.suffix.lower() == ".xlsx":
        # A sheet is read with the row mapping a CSV export of it would use.
        if spec.format not in generic.ROW_FORMATS:
            err.print(f"[red]a sheet needs a row mapping (format csv), not {spec.format}[/red]")
            raise typer.Exit(2)
        spec = dataclasses.replace(spec, format="xlsx")
    elif spec.format == "xlsx":  # a sheet's mapping reads the sheet exported as CSV too
        spec = dataclasses.replace(spec, format="csv")
    # The mapping's status table, with the channel's overrides on top.
    try:
        plan = generic.plan_import(
            chosen.id, spec, body, statuses_for(spec.statuses, chosen), sheet=sheet
        )
    except generic.SheetNotFound as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    ingest = [] if plan.errors and on_error == "reject-file" else list(plan.good)
    rejected = list(plan.bad) if on_error == "reject-bad-rows" else []
    outcomes: dict[str, int] = {}

    async def go() -> None:
        hub = build_hub(settings, Role.API)  # ingest only: running hubs deliver the events
        await hub.start(dispatch=False, pull=False)
        try:
            commands = []
            for p in [*ingest, *rejected]:
                raw = orjson.dumps(p.raw, default=str)
                audit = orjson.dumps({"file": file.name, "rows": list(p.rows)}).decode()
                if p.snapshot is not None:
                    msg_id, topic = generic.message_id(p.snapshot, raw), "import"
                else:
                    msg_id, topic = f"import:{file.name}:{list(p.rows)}", "import:unmappable"
                commands.append(
                    IngestChannelOrder(
                        channel_id=chosen.id,
                        kind=chosen.kind,
                        message_id=msg_id,
                        topic=topic,
                        snapshot=p.snapshot,
                        received_at=utcnow(),
                        body=raw,
                        headers=audit,
                    )
                )
            for start in range(0, len(commands), 200):  # group commit takes a batch at once
                results = await asyncio.gather(
                    *(hub.handle(c) for c in commands[start : start + 200])
                )
                for r in results:
                    outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        finally:
            await hub.stop()

    _run(go)
    errors = [{"row": e.row, "field": e.field, "problem": e.problem} for e in plan.errors]
    summary = {
        "file": str(file),
        "policy": on_error,
        "orders": len(plan.good) + len(plan.bad),
        "bad_orders": len(plan.bad),
        "imported": sum(1 for p in ingest if p.snapshot is not None),
        **{f"outcome_{k}": v for k, v in sorted(outcomes.items())},
    }
    if json_out:
        out = {"summary": summary, "errors": errors}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _table([summary], list(summary), "import")
        if errors:
            _table(errors, ["row", "field", "problem"], "rows refused")
    if plan.errors and on_error != "skip-bad-rows":
        raise typer.Exit(1)


# ---- operator verbs ------------------------------------------------------------------
def _with_db(config: Path | None, fn: Callable[[Any], Awaitable[T]]) -> T:
    from ordersync.adapters.db.database import Database

    settings = _settings(config)

    async def go() -> T:
        db = Database(settings.database_url)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return _run(go)


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    console.print(table)


def _emit(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _table(rows, columns, title)


@orders_app.command("list")
def orders_list(
    config: ConfigOpt = None,
    status: Annotated[str | None, typer.Option(help="Filter by status.")] = None,
    channel: Annotated[str | None, typer.Option(help="Filter by channel id.")] = None,
    limit: int = 50,
    json_out: JsonOpt = False,
) -> None:
    """List orders."""
    from ordersync.adapters.db import queries

    rows = _with_db(
        config, lambda db: queries.list_orders(db, status=status, channel_id=channel, limit=limit)
    )
    for r in rows:
        r["total"] = f"{r['totals']['total']} {r['currency']}"
    cols = ["id", "channel_id", "external_id", "status", "payment_status", "total", "version"]
    _emit(rows, cols, "orders", json_out)


@orders_app.command("show")
def orders_show(order_id: str, config: ConfigOpt = None) -> None:
    """Show one order and its history as JSON."""
    from ordersync.adapters.db import queries

    async def go(db: Any) -> dict[str, Any] | None:
        doc = await queries.get_order(db, order_id)
        if doc is not None:
            doc["history"] = await queries.order_history(db, order_id)
        return doc

    doc = _with_db(config, go)
    if doc is None:
        err.print(f"no order {order_id}")
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


_DELIVERY_COLS = [
    "id",
    "destination_id",
    "order_id",
    "event_type",
    "order_version",
    "state",
    "attempts",
    "last_status",
    "last_error",
]


def _list_deliveries(
    config: Path | None, state: str | None, destination: str | None, order: str | None, limit: int
) -> list[dict[str, Any]]:
    from ordersync.adapters.db.deliveries import SqlDeliveryStore

    return _with_db(
        config,
        lambda db: SqlDeliveryStore(db).find(
            state=state, destination_id=destination, order_id=order, limit=limit
        ),
    )


@deliveries_app.command("list")
def deliveries_list(
    config: ConfigOpt = None,
    state: Annotated[str | None, typer.Option(help="pending, succeeded or dead.")] = None,
    destination: Annotated[str | None, typer.Option(help="Destination id.")] = None,
    order: Annotated[str | None, typer.Option(help="Order id.")] = None,
    limit: int = 50,
    json_out: JsonOpt = False,
) -> None:
    """List deliveries."""
    _emit(
        _list_deliveries(config, state, destination, order, limit),
        _DELIVERY_COLS,
        "deliveries",
        json_out,
    )


@deliveries_app.command("summary")
def deliveries_summary(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Counts by destination and state."""
    from ordersync.adapters.db.deliveries import SqlDeliveryStore

    summary = _with_db(config, lambda db: SqlDeliveryStore(db).summary())
    rows = [{"destination": d, **states} for d, states in sorted(summary.items())]
    _emit(rows, ["destination", "pending", "succeeded", "dead"], "deliveries", json_out)


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = None,
    destination: Annotated[str | None, typer.Option(help="Destination id.")] = None,
    limit: int = 50,
    json_out: JsonOpt = False,
) -> None:
    """List dead-lettered deliveries."""
    _emit(
        _list_deliveries(config, "dead", destination, None, limit),
        _DELIVERY_COLS,
        "dead letters",
        json_out,
    )


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigOpt = None,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
) -> None:
    """Queue every dead-lettered delivery again (a running hub picks them up)."""
    from ordersync.adapters.db.deliveries import SqlDeliveryStore
    from ordersync.clock import to_us, utcnow

    n, _ = _with_db(
        config, lambda db: SqlDeliveryStore(db).replay_dead(destination, to_us(utcnow()))
    )
    console.print(f"queued {n} dead-lettered deliveries again")


@app.command()
def replay(delivery_id: str, config: ConfigOpt = None) -> None:
    """Queue one delivery again (same webhook-id)."""
    from ordersync.adapters.db.deliveries import SqlDeliveryStore, parse_public_id
    from ordersync.clock import to_us, utcnow
    from ordersync.domain.errors import DomainError

    try:
        _with_db(
            config,
            lambda db: SqlDeliveryStore(db).replay(parse_public_id(delivery_id), to_us(utcnow())),
        )
    except DomainError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{delivery_id} queued again")


@app.command()
def route(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the decisions; change nothing (required).")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Orders created at or after this RFC 3339 time (UTC)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many orders.", min=1)] = 100,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Route past orders again with the configured rules, oldest first, and explain each."""
    from datetime import UTC, datetime

    from ordersync.adapters.db.routing import dry_run_report
    from ordersync.bootstrap import inventory_policy

    if not dry_run:
        err.print("only --dry-run is supported: orders are routed as they arrive")
        raise typer.Exit(2)
    start = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            err.print(f"[red]--since: not an RFC 3339 time: {since!r}[/red]")
            raise typer.Exit(2) from None
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    settings = _settings(config)
    policy = inventory_policy(settings)
    if policy is None or policy.routing is None:
        err.print("no locations are configured: there is nothing to route to")
        raise typer.Exit(2)
    setup, locations = policy.routing, policy.locations
    rows, summary = _with_db(
        config, lambda db: dry_run_report(db, setup, locations, since=start, limit=limit)
    )
    if json_out:
        out = {
            "orders": summary.orders,
            "single_location": summary.single_location,
            "split": summary.split,
            "backordered": summary.backordered,
            "unroutable": summary.unroutable,
            "shipments_per_location": summary.shipments_per_location,
            "decisions": [
                {"order_id": r["order_id"], **r["decision"], "text": r["explanation"]} for r in rows
            ],
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    cols = ["order_id", "outcome", "locations", "backordered", "explanation"]
    _table(rows, cols, "routing dry run (nothing changed)")
    console.print(
        f"{summary.orders} orders: {summary.single_location} from one location,"
        f" {summary.split} split, {summary.backordered} backordered,"
        f" {summary.unroutable} unroutable"
    )


# ---- stock feeds ---------------------------------------------------------------------
stock_app = typer.Typer(
    help="Stock: import WMS/ERP feeds, check the ledger against the stock.", no_args_is_help=True
)
app.add_typer(stock_app, name="stock")


@stock_app.command("import")
def stock_import(
    file: Annotated[Path, typer.Argument(help="CSV: sku,location_id,on_hand[,safety_stock].")],
    mode: Annotated[
        str, typer.Option("--mode", help="snapshot (counts replace on_hand) or delta (added).")
    ] = "snapshot",
    key: Annotated[
        str | None,
        typer.Option(
            "--key", help="The feed's message id (default: derived from the file's content)."
        ),
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Apply a stock feed file, every row or none (the same path as POST /v1/inventory/feeds).

    Importing the same file twice does nothing the second time (its key is its content).
    """
    import hashlib

    from ordersync.bootstrap import Role, build_hub
    from ordersync.clock import utcnow
    from ordersync.domain.errors import DomainError
    from ordersync.domain.stock_feeds import FeedMode, ImportStockFeed, InvalidFeed, parse_csv

    settings = _settings(config)
    _setup_logging("WARNING")
    if mode not in ("snapshot", "delta"):
        err.print("[red]--mode must be snapshot or delta[/red]")
        raise typer.Exit(2)
    if not settings.locations:
        err.print("[red]no locations are configured: inventory is off[/red]")
        raise typer.Exit(2)
    feed_mode = FeedMode(mode)
    try:
        body = file.read_bytes()
        text = body.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        err.print(f"[red]cannot read {file}: {e}[/red]")
        raise typer.Exit(2) from None
    signed = mode.encode() + b"\n" + body
    message_id = key or "file:" + hashlib.sha256(signed).hexdigest()
    errors: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    async def go() -> None:
        hub = build_hub(settings, Role.API)  # feed only: running hubs publish the change
        await hub.start(dispatch=False, pull=False)
        try:
            assert hub.inventory is not None  # locations are configured (checked above)
            rows = parse_csv(text, feed_mode, frozenset(hub.inventory.policy.locations))
            response = await hub.inventory.handle(
                ImportStockFeed(
                    tuple(rows),
                    feed_mode,
                    utcnow(),
                    "cli",
                    message_id,
                    hashlib.sha256(signed).hexdigest(),
                )
            )
            result.update(orjson.loads(response.body), replayed=response.replayed)
        except InvalidFeed as e:
            errors.extend(x.as_dict() for x in e.errors)
        except DomainError as e:  # e.g. --key reused for another file
            errors.append({"line": None, "column": None, "code": e.code, "detail": str(e)})
        finally:
            await hub.stop()

    _run(go)
    if json_out:
        out = {"errors": errors} if errors else result
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif errors:
        _table(errors, ["line", "column", "code", "detail"], "rows refused (nothing applied)")
    else:
        summary = {
            "file": str(file),
            "mode": mode,
            "rows": result.get("rows"),
            "replayed": result.get("replayed"),
        }
        _table([summary], list(summary), "stock import")
        _table(
            result.get("data", []),
            ["sku", "location_id", "on_hand", "reserved", "available", "safety_stock"],
            "stock now",
        )
    if errors:
        raise typer.Exit(1)


@stock_app.command("check")
def stock_check(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Reconcile the stock ledger with the stock table and the held reservations.

    Per (SKU, location): SUM(ledger) against stock on_hand and reserved, and reserved
    against the held reservations. Exit code 0 when all agree, 1 on any mismatch.
    """
    from ordersync.adapters.db.stock_audit import reconcile

    result = _with_db(config, reconcile)
    found = result.mismatches
    if json_out:
        rows = [
            {
                "sku": m.sku,
                "location_id": m.location_id,
                "on_hand": m.on_hand,
                "ledger_on_hand": m.ledger_on_hand,
                "reserved": m.reserved,
                "ledger_reserved": m.ledger_reserved,
                "held": m.held,
                "problems": m.problems,
            }
            for m in found
        ]
        out = {"rows": result.rows, "agree": not found, "mismatches": rows}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif found:
        shown: list[dict[str, Any]] = [
            {
                "sku": m.sku,
                "location": m.location_id,
                "stock on_hand/reserved": "missing"
                if m.on_hand is None
                else f"{m.on_hand}/{m.reserved}",
                "ledger on_hand/reserved": f"{m.ledger_on_hand}/{m.ledger_reserved}",
                "held": m.held,
                "problems": ", ".join(m.problems),
            }
            for m in found
        ]
        _table(shown, list(shown[0]), f"stock mismatches: {len(found)} of {result.rows} rows")
    else:
        console.print(f"ledger, stock and holds agree: {result.rows} rows")
    if found:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

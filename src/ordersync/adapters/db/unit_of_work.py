"""The SQL unit of work: buffered writes flushed with executemany at commit.

Hand-written SQL (SQLAlchemy Core `text()`) on purpose: this is the ingest hot path, and
the statements are plain enough to run unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction

from ordersync.adapters.db.buyer_fingerprints import FingerprintDigest, SqlBuyerFingerprints
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.inventory import SqlStockRepository, StockCarry
from ordersync.adapters.db.pg_batch import Args, in_transaction
from ordersync.clock import to_us, utcnow
from ordersync.domain.codec import order_from_dict
from ordersync.domain.inventory import InventoryPolicy
from ordersync.domain.orders import Order
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.pipeline import Turn
from ordersync.service.unit_of_work import (
    BufferedOrderRepository,
    IdempotencyStore,
    Inbox,
    InboxRecord,
    StoredResponse,
    UnitOfWork,
)

_SELECT_ORDER = "SELECT doc FROM orders"
OUTBOX_CHANNEL = "ordersync_outbox"  # PostgreSQL LISTEN/NOTIFY channel of the relay


class _Conn:
    """Lazily opened write transaction shared by the repositories of one unit of work."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: AsyncConnection | None = None
        self.tx: AsyncTransaction | None = None
        self.lock_suffix = "" if db.is_sqlite else " FOR UPDATE"

    async def get(self) -> AsyncConnection:
        if self.conn is None:
            self.conn = await self.db.writer.connect()
            self.tx = await self.conn.begin()
        return self.conn

    async def close(self, commit: bool) -> None:
        if self.conn is None:
            return
        try:
            if self.tx is not None and self.tx.is_active:
                await (self.tx.commit() if commit else self.tx.rollback())
        finally:
            await self.conn.close()
            self.conn, self.tx = None, None


class SqlOrderRepository(BufferedOrderRepository):
    def __init__(self, c: _Conn, router: EventRouter) -> None:
        super().__init__(router)
        self._c = c

    async def get(self, order_id: str) -> Order | None:
        if order_id in self._by_id:
            return self._by_id[order_id]
        conn = await self._c.get()
        row = (
            await conn.execute(
                text(f"{_SELECT_ORDER} WHERE id = :id{self._c.lock_suffix}"), {"id": order_id}
            )
        ).first()
        return self._remember(order_from_dict(orjson.loads(row[0]))) if row else None

    async def get_by_external(self, channel_id: str, external_id: str) -> Order | None:
        key = (channel_id, external_id)
        if key not in self._by_ext:
            await self.preload_external(channel_id, [external_id])
        return self._by_ext.get(key)

    async def preload_external(self, channel_id: str, external_ids: list[str]) -> None:
        wanted = sorted({e for e in external_ids if (channel_id, e) not in self._by_ext})
        if not wanted:
            return
        conn = await self._c.get()
        stmt = text(
            f"{_SELECT_ORDER} WHERE channel_id = :c AND external_id IN :ids"
            f" ORDER BY id{self._c.lock_suffix}"
        ).bindparams(bindparam("ids", expanding=True))
        for (doc,) in await conn.execute(stmt, {"c": channel_id, "ids": wanted}):
            self._remember(order_from_dict(orjson.loads(doc)))
        for e in wanted:
            self._by_ext.setdefault((channel_id, e), None)


class SqlInbox(Inbox):
    def __init__(self, c: _Conn) -> None:
        self._c = c
        self._seen: set[tuple[str, str]] = set()
        self._checked: set[tuple[str, str]] = set()
        self.records: list[InboxRecord] = []

    async def seen(self, source: str, message_id: str) -> bool:
        key = (source, message_id)
        if key not in self._checked:
            await self.preload(source, [message_id])
        return key in self._seen

    async def preload(self, source: str, message_ids: list[str]) -> None:
        wanted = sorted({m for m in message_ids if (source, m) not in self._checked})
        if not wanted:
            return
        conn = await self._c.get()
        stmt = text(
            "SELECT message_id FROM inbox WHERE source = :s AND message_id IN :ids"
        ).bindparams(bindparam("ids", expanding=True))
        for (mid,) in await conn.execute(stmt, {"s": source, "ids": wanted}):
            self._seen.add((source, mid))
        self._checked.update((source, m) for m in wanted)

    def record(self, record: InboxRecord) -> None:
        key = (record.source, record.message_id)
        self._seen.add(key)
        self._checked.add(key)
        self.records.append(record)


class SqlIdempotencyStore(IdempotencyStore):
    def __init__(self, c: _Conn) -> None:
        self._c = c
        self._pending: dict[tuple[str, str], StoredResponse] = {}

    async def get(self, principal: str, key: str) -> StoredResponse | None:
        if (principal, key) in self._pending:
            return self._pending[(principal, key)]
        conn = await self._c.get()
        row = (
            await conn.execute(
                text(
                    "SELECT fingerprint, status, body FROM idempotency_keys"
                    " WHERE principal = :p AND key = :k"
                ),
                {"p": principal, "k": key},
            )
        ).first()
        return StoredResponse(row[0], row[1], bytes(row[2])) if row else None

    def put(self, principal: str, key: str, response: StoredResponse) -> None:
        self._pending[(principal, key)] = response

    @property
    def pending(self) -> dict[tuple[str, str], StoredResponse]:
        return self._pending


class SqlUnitOfWork(UnitOfWork):
    """`relay`: a broker is configured, so routed events wait for the outbox relay (their
    `published_us` stays NULL) and PostgreSQL listeners are notified at commit."""

    def __init__(
        self,
        db: Database,
        router: EventRouter,
        *,
        relay: bool = False,
        inventory: InventoryPolicy | None = None,
        fingerprints: FingerprintDigest | None = None,
        stock_carry: StockCarry | None = None,
    ) -> None:
        self._c = _Conn(db)
        self._relay = relay
        self._notify = relay and not db.is_sqlite
        self.orders: SqlOrderRepository = SqlOrderRepository(self._c, router)
        self.inbox: SqlInbox = SqlInbox(self._c)
        self.idempotency: SqlIdempotencyStore = SqlIdempotencyStore(self._c)
        if inventory is not None:
            self.stock: SqlStockRepository | None = SqlStockRepository(
                self._c, router, inventory, stock_carry
            )
        if fingerprints is not None:  # a fraud burst rule is configured
            self.fingerprints = SqlBuyerFingerprints(self._c, fingerprints)
        # Deliveries created by the last commit, per destination (wakes the dispatcher).
        self.committed_destinations: set[str] = set()

    async def commit(self, turn: Turn | None = None) -> None:
        """`turn`: a pipelined stock batch's place in line (ADR 10): nothing is written
        before the previous batch's guarded write returned (see `SqlStockRepository.flush`)."""
        conn = await self._c.get()
        now_us = to_us(utcnow())
        if turn is not None and self._orders_buffered():
            await turn.wait(committed=True)
        await _flush(conn, self, now_us, self._relay)
        outbox = self.orders.outbox
        if self.stock is not None:
            # Stock changes and their events commit with the orders that caused them.
            stock_events = await self.stock.flush(conn, now_us, turn)
            if turn is not None:
                if not turn.waited:  # nothing written: still commit in line
                    await turn.wait(committed=True)
                turn.written()
            if stock_events:
                await _flush_outbox(conn, stock_events, now_us, self._relay)
                outbox = outbox + stock_events
        if self._notify and any(e.destinations for e in outbox):
            # Delivered at commit, and only if it commits: wakes the relay at once.
            await conn.execute(text(f"NOTIFY {OUTBOX_CHANNEL}"))
        await self._c.close(commit=True)
        self.committed_destinations = {d for e in outbox for d in e.destinations}

    async def rollback(self) -> None:
        await self._c.close(commit=False)

    def _orders_buffered(self) -> bool:
        o = self.orders
        return bool(
            o.new
            or o.dirty
            or o.history
            or o.outbox
            or self.inbox.records
            or self.idempotency.pending
        )


def _order_row(o: Order, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": o.id,
        "channel_id": o.channel_id,
        "external_id": o.external_id,
        "status": o.status.value,
        "payment_status": o.payment_status.value,
        "version": o.version,
        "channel_updated_us": to_us(o.channel_updated_at) if o.channel_updated_at else None,
        "created_us": to_us(o.created_at),
        "updated_us": to_us(o.updated_at),
        "doc": orjson.dumps(doc).decode(),
    }


async def _executemany(conn: AsyncConnection, sql: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(sql), rows)


async def _flush(conn: AsyncConnection, uow: SqlUnitOfWork, now_us: int, relay: bool) -> None:
    if conn.dialect.name == "postgresql":
        await _flush_pg(conn, uow, now_us, relay)
        return
    repo = uow.orders
    await _executemany(
        conn,
        "INSERT INTO orders (id, channel_id, external_id, status, payment_status, version,"
        " channel_updated_us, created_us, updated_us, doc) VALUES (:id, :channel_id,"
        " :external_id, :status, :payment_status, :version, :channel_updated_us, :created_us,"
        " :updated_us, :doc)",
        [_order_row(o, repo.docs[o.id]) for o in repo.new.values()],
    )
    await _executemany(
        conn,
        "UPDATE orders SET status = :status, payment_status = :payment_status,"
        " version = :version, channel_updated_us = :channel_updated_us,"
        " updated_us = :updated_us, doc = :doc WHERE id = :id",
        [_order_row(o, repo.docs[o.id]) for o in repo.dirty.values()],
    )
    await _executemany(
        conn,
        "INSERT INTO order_history (order_id, version, from_status, to_status,"
        " from_payment_status, to_payment_status, cause, message_id, changed, at_us)"
        " VALUES (:order_id, :version, :from_status, :to_status, :from_payment_status,"
        " :to_payment_status, :cause, :message_id, :changed, :at_us)",
        [
            {
                "order_id": order_id,
                "version": h.version,
                "from_status": h.from_status.value if h.from_status else None,
                "to_status": h.to_status.value,
                "from_payment_status": h.from_payment_status.value
                if h.from_payment_status
                else None,
                "to_payment_status": h.to_payment_status.value,
                "cause": h.cause,
                "message_id": h.source_message_id,
                "changed": ",".join(h.changed) or None,
                "at_us": to_us(h.at),
            }
            for order_id, h in repo.history
        ],
    )
    if repo.outbox:
        await _flush_outbox(conn, repo.outbox, now_us, relay)
    await _executemany(
        conn,
        "INSERT INTO inbox (source, message_id, topic, received_us, outcome, order_id, detail,"
        " headers, body) VALUES (:source, :message_id, :topic, :received_us, :outcome,"
        " :order_id, :detail, :headers, :body)",
        [
            {
                "source": r.source,
                "message_id": r.message_id,
                "topic": r.topic,
                "received_us": to_us(r.received_at),
                "outcome": r.outcome,
                "order_id": r.order_id,
                "detail": r.detail,
                "headers": r.headers,
                "body": r.body,
            }
            for r in uow.inbox.records
        ],
    )
    await _executemany(
        conn,
        "INSERT INTO idempotency_keys (principal, key, fingerprint, status, body, created_us)"
        " VALUES (:principal, :key, :fingerprint, :status, :body, :created_us)",
        [
            {
                "principal": p,
                "key": k,
                "fingerprint": r.fingerprint,
                "status": r.status,
                "body": r.body,
                "created_us": now_us,
            }
            for (p, k), r in uow.idempotency.pending.items()
        ],
    )


async def _flush_outbox(
    conn: AsyncConnection, entries: list[OutboxEntry], now_us: int, relay: bool
) -> None:
    if conn.dialect.name == "postgresql":
        await _flush_outbox_pg(conn, entries, now_us, relay)
        return
    # Events first; their sequence numbers order the deliveries of each order.
    await _executemany(
        conn,
        "INSERT INTO events (id, type, order_id, order_version, created_us, body, published_us)"
        " VALUES (:id, :type, :order_id, :version, :created_us, :body, :published_us)",
        [
            {
                "id": e.event_id,
                "type": e.type,
                "order_id": e.order_id,
                "version": e.version,
                "created_us": now_us,
                "body": e.body,
                # NULL: the relay still has to publish it (only events someone subscribes to).
                "published_us": None if relay and e.destinations else now_us,
            }
            for e in entries
        ],
    )
    routed = [e for e in entries if e.destinations]
    if not routed:
        return
    stmt = text("SELECT id, seq FROM events WHERE id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    seqs: dict[str, int] = dict(
        (await conn.execute(stmt, {"ids": [e.event_id for e in routed]})).all()
    )
    await _executemany(
        conn,
        "INSERT INTO deliveries (event_seq, destination_id, order_id, state, attempts,"
        " next_attempt_us, created_us, updated_us) VALUES (:event_seq, :destination_id,"
        " :order_id, 'pending', 0, :now, :now, :now)",
        [
            {
                "event_seq": seqs[e.event_id],
                "destination_id": d,
                "order_id": e.order_id,
                "now": now_us,
            }
            for e in routed
            for d in e.destinations
        ],
    )


async def _flush_outbox_pg(
    conn: AsyncConnection, entries: list[OutboxEntry], now_us: int, relay: bool
) -> None:
    """The events and their deliveries in one statement (see `_outbox_ctes`)."""
    args = Args()
    ctes = _outbox_ctes(args, entries, now_us, relay)
    await (await in_transaction(conn)).execute(_statement(ctes), *args.values)


def _statement(ctes: list[tuple[str, str]]) -> str:
    """One statement of data-modifying CTEs (each runs to completion, all or nothing)."""
    return "WITH " + ", ".join(f"{name} AS ({sql})" for name, sql in ctes) + " SELECT 1"


def _text_or_bytes(args: Args, values: list[bytes | None]) -> tuple[str, bool]:
    """A bytea column as one text parameter when every value is UTF-8 (JSON and webhook
    bodies nearly always are: converted back with `convert_to`), else as a bytea array.
    Returns the array expression and whether it is text. (A NUL byte is valid UTF-8 but
    PostgreSQL text cannot hold it: such a batch goes as bytea too.)"""
    try:
        texts = [None if v is None else v.decode() for v in values]
    except UnicodeDecodeError:
        return args.typed_array(values, "bytea"), False
    if any(v is not None and "\x00" in v for v in texts):
        return args.typed_array(values, "bytea"), False
    return args.array(texts, "text"), True


def _outbox_ctes(
    args: Args, entries: list[OutboxEntry], now_us: int, relay: bool
) -> list[tuple[str, str]]:
    """The events' rows from one parameter per column, their `seq`s returned straight into
    the deliveries' INSERT, both in the batch's order (a delivery's `seq` orders it within
    its order's lane). Before: an executemany per table and a lookup of the new `seq`s."""
    if not entries:
        return []
    now = args.scalar(now_us, "bigint")
    bodies, text_bodies = _text_or_bytes(args, [e.body for e in entries])
    body = "convert_to(v.body, 'UTF8')" if text_bodies else "v.body"
    columns = ", ".join(
        [
            args.array([e.event_id for e in entries], "text"),
            args.array([e.type for e in entries], "text"),
            args.array([e.order_id for e in entries], "text"),
            args.array([e.version for e in entries], "integer"),
            bodies,
            # NULL: the relay still has to publish it (only events someone subscribes to).
            args.array([None if relay and e.destinations else now_us for e in entries], "bigint"),
        ]
    )
    ctes = [
        (
            "ev",
            "INSERT INTO events (id, type, order_id, order_version, created_us, body,"  # noqa: S608 - constants
            f" published_us) SELECT v.id, v.type, v.order_id, v.version, {now}, {body},"
            f" v.published FROM unnest({columns}) WITH ORDINALITY AS v(id, type, order_id,"
            " version, body, published, n) ORDER BY v.n RETURNING seq, id",
        )
    ]
    targets = [(e.event_id, d, e.order_id) for e in entries for d in e.destinations]
    if targets:
        deliveries = args.unnest(
            [
                ([t[0] for t in targets], "text"),
                ([t[1] for t in targets], "text"),
                ([t[2] for t in targets], "text"),
            ]
        )
        ctes.append(
            (
                "dv",
                "INSERT INTO deliveries (event_seq, destination_id, order_id, state, attempts,"  # noqa: S608 - constants
                f" next_attempt_us, created_us, updated_us) SELECT ev.seq, d.dest, d.order_id,"
                f" 'pending', 0, {now}, {now}, {now} FROM {deliveries} WITH ORDINALITY"
                " AS d(event_id, dest, order_id, n) JOIN ev ON ev.id = d.event_id ORDER BY d.n",
            )
        )
    return ctes


_ORDER_TYPES = (
    ("id", "text"),
    ("channel_id", "text"),
    ("external_id", "text"),
    ("status", "text"),
    ("payment_status", "text"),
    ("version", "integer"),
    ("channel_updated_us", "bigint"),
    ("created_us", "bigint"),
    ("updated_us", "bigint"),
    ("doc", "text"),
)


def _order_columns(args: Args, orders: list[dict[str, Any]]) -> str:
    return args.unnest([([o[name] for o in orders], t) for name, t in _ORDER_TYPES])


async def _flush_pg(conn: AsyncConnection, uow: SqlUnitOfWork, now_us: int, relay: bool) -> None:
    """`_flush` on PostgreSQL: every table of the batch in one statement of data-modifying
    CTEs fed by one parameter per column (pg_batch), one round trip instead of an
    executemany (a Bind/Execute per row) per table."""
    repo = uow.orders
    args = Args()
    ctes: list[tuple[str, str]] = []
    names = ", ".join(name for name, _ in _ORDER_TYPES)
    if repo.new:
        rows = [_order_row(o, repo.docs[o.id]) for o in repo.new.values()]
        ctes.append(
            (
                "oi",
                f"INSERT INTO orders ({names}) SELECT * FROM {_order_columns(args, rows)}",  # noqa: S608 - constants
            )
        )
    if repo.dirty:
        rows = [_order_row(o, repo.docs[o.id]) for o in repo.dirty.values()]
        ctes.append(
            (
                "ou",
                "UPDATE orders AS o SET status = v.status, payment_status = v.payment_status,"  # noqa: S608 - constants
                " version = v.version, channel_updated_us = v.channel_updated_us,"
                " updated_us = v.updated_us, doc = v.doc"
                f" FROM {_order_columns(args, rows)} AS v({names}) WHERE o.id = v.id",
            )
        )
    if repo.history:
        hist = repo.history
        cols = args.unnest(
            [
                ([order_id for order_id, _ in hist], "text"),
                ([h.version for _, h in hist], "integer"),
                ([h.from_status.value if h.from_status else None for _, h in hist], "text"),
                ([h.to_status.value for _, h in hist], "text"),
                (
                    [
                        h.from_payment_status.value if h.from_payment_status else None
                        for _, h in hist
                    ],
                    "text",
                ),
                ([h.to_payment_status.value for _, h in hist], "text"),
                ([h.cause for _, h in hist], "text"),
                ([h.source_message_id for _, h in hist], "text"),
                ([",".join(h.changed) or None for _, h in hist], "text"),
                ([to_us(h.at) for _, h in hist], "bigint"),
            ]
        )
        ctes.append(
            (
                "oh",
                "INSERT INTO order_history (order_id, version, from_status, to_status,"  # noqa: S608 - constants
                " from_payment_status, to_payment_status, cause, message_id, changed, at_us)"
                " SELECT v.o, v.v, v.fs, v.ts, v.fp, v.tp, v.c, v.m, v.ch, v.at"
                f" FROM {cols} WITH ORDINALITY AS v(o, v, fs, ts, fp, tp, c, m, ch, at, n)"
                " ORDER BY v.n",
            )
        )
    ctes += _outbox_ctes(args, repo.outbox, now_us, relay)
    records = uow.inbox.records
    if records:
        bodies, text_bodies = _text_or_bytes(args, [r.body for r in records])
        cols = ", ".join(
            [
                args.array([r.source for r in records], "text"),
                args.array([r.message_id for r in records], "text"),
                args.array([r.topic for r in records], "text"),
                args.array([to_us(r.received_at) for r in records], "bigint"),
                args.array([r.outcome for r in records], "text"),
                args.array([r.order_id for r in records], "text"),
                args.array([r.detail for r in records], "text"),
                args.array([r.headers for r in records], "text"),
                bodies,
            ]
        )
        body = "convert_to(v.body, 'UTF8')" if text_bodies else "v.body"
        ctes.append(
            (
                "ib",
                "INSERT INTO inbox (source, message_id, topic, received_us, outcome, order_id,"  # noqa: S608 - constants
                " detail, headers, body) SELECT v.source, v.message_id, v.topic, v.received_us,"
                f" v.outcome, v.order_id, v.detail, v.headers, {body} FROM unnest({cols})"
                " AS v(source, message_id, topic, received_us, outcome, order_id, detail,"
                " headers, body)",
            )
        )
    pending = uow.idempotency.pending
    if pending:
        keys = list(pending.items())
        bodies, text_bodies = _text_or_bytes(args, [r.body for _, r in keys])
        cols = ", ".join(
            [
                args.array([p for (p, _), _ in keys], "text"),
                args.array([k for (_, k), _ in keys], "text"),
                args.array([r.fingerprint for _, r in keys], "text"),
                args.array([r.status for _, r in keys], "integer"),
                bodies,
            ]
        )
        body = "convert_to(v.body, 'UTF8')" if text_bodies else "v.body"
        ctes.append(
            (
                "ik",
                "INSERT INTO idempotency_keys (principal, key, fingerprint, status, body,"  # noqa: S608 - constants
                f" created_us) SELECT v.p, v.k, v.f, v.s, {body}, {args.scalar(now_us, 'bigint')}"
                f" FROM unnest({cols}) AS v(p, k, f, s, body)",
            )
        )
    if ctes:
        await (await in_transaction(conn)).execute(_statement(ctes), *args.values)

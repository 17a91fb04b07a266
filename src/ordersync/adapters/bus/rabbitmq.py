"""RabbitMQ bus: quorum lane queues, pipelined publisher confirms, manual acks, dead letters.

Topology (declared idempotently by every process at start):

- exchange `<namespace>.events` (direct, durable); one quorum queue per lane,
  `<namespace>.lane.<n>`, bound with routing key `<n>`; an order's events all use the lane
  `crc32(order_id) % lanes`, so they queue in commit order;
- lane queues dead-letter to `<namespace>.dead` (fanout) -> `<namespace>.dead-letters` once a
  message has been redelivered `delivery_limit` times (a poison message that crashes its
  consumer); its deliveries are still pending in the database and the sweeper retries them
  under the normal retry policy, so dead-lettering a message never loses an event;
- messages are persistent; the relay publishes a whole batch and waits for all confirms
  together (pipelined), and consumers ack only after the outcome is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from ordersync.service.bus import EventMessage, Handler, decode_batch, encode_batch, lane_of

log = logging.getLogger(__name__)


class RabbitBus:
    def __init__(
        self,
        url: str,
        *,
        lanes: int = 8,
        prefetch: int = 32,
        events_per_message: int = 100,
        delivery_limit: int = 20,
        namespace: str = "ordersync",
        name: str = "ordersync",
    ) -> None:
        self.url = url
        self.exchange_name = f"{namespace}.events"
        self.dead_exchange = f"{namespace}.dead"
        self.dead_queue = f"{namespace}.dead-letters"
        self.namespace = namespace
        self.lanes = lanes
        self.prefetch = prefetch
        self.events_per_message = events_per_message
        self.delivery_limit = delivery_limit
        self.name = name
        self._conn: AbstractRobustConnection | None = None
        self._pub_channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._consume_channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._consumers: dict[int, tuple[aio_pika.abc.AbstractQueue, str]] = {}
        self._handling: dict[int, set[asyncio.Task[None]]] = {}
        self._handler: Handler | None = None

    async def connect(self) -> None:
        self._conn = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": self.name}, timeout=10
        )
        ch = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        self._pub_channel = ch
        await self._declare(ch)
        self._exchange = await ch.get_exchange(self.exchange_name)

    async def _declare(self, ch: aio_pika.abc.AbstractChannel) -> None:
        ex = await ch.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead = await ch.declare_exchange(
            self.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dq = await ch.declare_queue(
            self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dq.bind(dead)
        for n in range(self.lanes):
            q = await ch.declare_queue(
                self.lane_queue(n),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": self.delivery_limit,
                    "x-dead-letter-exchange": self.dead_exchange,
                },
            )
            await q.bind(ex, routing_key=str(n))

    def lane_queue(self, n: int) -> str:
        return f"{self.namespace}.lane.{n}"

    async def delete_topology(self) -> None:
        """Remove this namespace's queues and exchanges (tests and benchmarks clean up)."""
        assert self._conn is not None
        async with self._conn.channel() as ch:
            for n in range(self.lanes):
                await ch.queue_delete(self.lane_queue(n))
            await ch.queue_delete(self.dead_queue)
            await ch.exchange_delete(self.exchange_name)
            await ch.exchange_delete(self.dead_exchange)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 5)
            self._conn = None

    async def ping(self) -> None:
        if self._conn is None or self._conn.is_closed:
            raise ConnectionError("not connected to RabbitMQ")
        # A passive declare is a real round trip to the broker.
        assert self._pub_channel is not None
        await asyncio.wait_for(self._pub_channel.get_exchange(self.exchange_name, ensure=True), 2)

    # ---- Publisher -------------------------------------------------------------------
    async def publish(self, messages: list[EventMessage]) -> None:
        if self._exchange is None:
            raise ConnectionError("not connected to RabbitMQ")
        ex = self._exchange
        by_lane: dict[int, list[EventMessage]] = {}
        for m in messages:
            by_lane.setdefault(lane_of(m.order_id, self.lanes), []).append(m)
        # All in flight at once, then wait for every confirm: one round trip per batch.
        confirms = [
            ex.publish(
                aio_pika.Message(
                    encode_batch(chunk),
                    message_id=f"{chunk[0].event_id}+{len(chunk)}",
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=str(lane),
                mandatory=True,
                timeout=30,
            )
            for lane, lane_messages in by_lane.items()
            for chunk in _chunks(lane_messages, self.events_per_message)
        ]
        results = await asyncio.gather(*confirms, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    # ---- Subscriber ------------------------------------------------------------------
    async def subscribe(self, handler: Handler, lanes: list[int] | None = None) -> None:
        """Prepare to consume with `handler`; start the given lanes (None: all of them).
        Production workers pass [] and let the lane assigner start their share."""
        assert self._conn is not None, "connect() first"
        ch = await self._conn.channel(publisher_confirms=False)
        await ch.set_qos(prefetch_count=self.prefetch)
        self._consume_channel = ch
        self._handler = handler
        for n in range(self.lanes) if lanes is None else lanes:
            await self.start_lane(n)

    async def start_lane(self, lane: int) -> None:
        assert self._consume_channel is not None, "subscribe() first"
        if lane in self._consumers:
            return
        handling = self._handling.setdefault(lane, set())

        async def on_message(message: AbstractIncomingMessage) -> None:
            # Run handlers concurrently (up to the prefetch); ordering is the consumer's job.
            task = asyncio.create_task(self._handle(message))
            handling.add(task)
            task.add_done_callback(handling.discard)

        q = await self._consume_channel.get_queue(self.lane_queue(lane))
        self._consumers[lane] = (q, await q.consume(on_message, no_ack=False))

    async def stop_lane(self, lane: int, *, drain: bool) -> None:
        """Stop taking messages from `lane`; with `drain`, wait for its handlers (they ack)."""
        entry = self._consumers.pop(lane, None)
        if entry is not None:
            q, tag = entry
            with contextlib.suppress(Exception):
                await q.cancel(tag)
        if drain and (tasks := self._handling.get(lane)):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        assert self._handler is not None
        handler = self._handler
        try:
            batch = decode_batch(message.body)
        except Exception:
            log.error("undecodable bus message %s; dead-lettering it", message.message_id)
            with contextlib.suppress(Exception):
                await message.reject(requeue=False)
            return
        # Started in order, so each order's chain links up in commit order.
        results = await asyncio.gather(*(handler(m) for m in batch), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning(
                "handling %s failed (%r); the broker will redeliver it",
                message.message_id,
                failed[0],
            )
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        with contextlib.suppress(Exception):  # channel gone: the broker redelivers; we dedupe
            await message.ack()

    async def unsubscribe(self) -> None:
        for lane in list(self._consumers):
            await self.stop_lane(lane, drain=False)
        pending = [t for tasks in self._handling.values() for t in tasks]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in each lane and in the dead-letter queue (passive declares)."""
        assert self._conn is not None
        out: dict[str, int] = {}
        async with self._conn.channel() as ch:
            for name in [*(self.lane_queue(n) for n in range(self.lanes)), self.dead_queue]:
                q: Any = await ch.declare_queue(name, passive=True)
                out[name] = int(q.declaration_result.message_count or 0)
        return out


def _chunks(items: list[EventMessage], size: int) -> list[list[EventMessage]]:
    return [items[i : i + size] for i in range(0, len(items), size)]

"""The narrow bus interface: what the outbox relay publishes and what workers consume.

A message names one committed event and the deliveries it needs; the database stays the
truth about those deliveries (state, attempts, leases). The bus only carries the work to
some worker quickly, so a lost, repeated or reordered message can delay a delivery but
never lose, duplicate or reorder its effect: consumers claim a delivery in the database
only while it heads its (destination, order) lane, and the sweeper finds whatever no
message brought.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class EventMessage:
    event_seq: int
    event_id: str
    order_id: str
    created_us: int  # commit time, for the relay-lag metric
    deliveries: tuple[tuple[int, str], ...]  # (delivery seq, destination id)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "e": self.event_seq,
                "id": self.event_id,
                "o": self.order_id,
                "c": self.created_us,
                "d": self.deliveries,
            }
        )

    @classmethod
    def decode(cls, body: bytes) -> EventMessage:
        return cls.from_raw(orjson.loads(body))

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> EventMessage:
        return cls(
            event_seq=int(raw["e"]),
            event_id=str(raw["id"]),
            order_id=str(raw["o"]),
            created_us=int(raw["c"]),
            deliveries=tuple((int(s), str(d)) for s, d in raw["d"]),
        )


def encode_batch(messages: list[EventMessage]) -> bytes:
    """Several events of one lane travel as one broker message: the broker's cost is per
    message, and a lane's events stay in commit order inside it."""
    return b"[" + b",".join(m.encode() for m in messages) + b"]"


def decode_batch(body: bytes) -> list[EventMessage]:
    raw = orjson.loads(body)
    if isinstance(raw, dict):
        raw = [raw]
    return [EventMessage.from_raw(r) for r in raw]


def lane_of(order_id: str, lanes: int) -> int:
    """Stable across processes and restarts (unlike `hash()`): all events of an order travel
    the same lane, so they normally reach workers in commit order."""
    return zlib.crc32(order_id.encode()) % lanes


Handler = Callable[[EventMessage], Awaitable[None]]


class Publisher(Protocol):
    async def publish(self, messages: list[EventMessage]) -> None:
        """Return once the broker has confirmed every message; raise if any was refused."""
        ...


class Subscriber(Protocol):
    async def subscribe(self, handler: Handler, lanes: list[int] | None = None) -> None:
        """Call `handler` for each message of the given lanes (None: all); acknowledge it
        when the handler returns, and let the broker redeliver it if the handler raises or
        the process dies."""
        ...

    async def start_lane(self, lane: int) -> None: ...

    async def stop_lane(self, lane: int, *, drain: bool) -> None:
        """Stop consuming `lane`; with `drain`, return once its handlers have finished."""
        ...

    async def unsubscribe(self) -> None:
        """Stop taking messages; wait for handlers in flight to finish and acknowledge."""
        ...

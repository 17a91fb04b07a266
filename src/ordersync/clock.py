"""Time: always timezone-aware UTC. Stored in the database as integer microseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_us(t: datetime) -> int:
    return (t - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)

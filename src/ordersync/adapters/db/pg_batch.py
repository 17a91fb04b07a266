"""PostgreSQL batch statements: many rows per statement, straight to asyncpg.

The hot write paths (a flash-sale stock batch, an ingest batch's outbox) send a batch's
rows as one statement of data-modifying CTEs fed by `unnest` of one parameter per column,
instead of `executemany` (a Bind/Execute per row, and SQLAlchemy's per-row parameter
processing). Each column travels as ONE text parameter (values joined by \x1f, None as
\x1e) split by `string_to_array`: asyncpg encodes a text[] element by element through abc
isinstance checks, 5x slower for a 256-row batch. A value holding either control character
(never in ids, numbers or JSON, which escapes them; conceivable in a SKU) makes that column
a typed array instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

_SEP, _NUL = "\x1f", "\x1e"


def param(values: list[Any]) -> str | list[Any]:
    """One column as one text parameter, or the list itself when that is not safe."""
    nulls = values.count(None)
    try:  # the common cases without a Python-level loop: all text, or all numbers
        if nulls:
            joined = _SEP.join(
                [_NUL if v is None else v if isinstance(v, str) else str(v) for v in values]
            )
        elif values and isinstance(values[0], str):
            joined = _SEP.join(values)
        else:
            joined = _SEP.join(map(str, values))
    except TypeError:  # text and numbers mixed
        joined = _SEP.join([v if isinstance(v, str) else str(v) for v in values])
    # string_to_array('') is empty: a lone empty string goes as an array
    if joined and joined.count(_SEP) == len(values) - 1 and joined.count(_NUL) == nulls:
        return joined
    return values


def cast(param: str | list[Any], pg_type: str, n: int) -> str:
    """The SQL array expression of parameter $n made by `_param`."""
    if isinstance(param, str):
        arr = f"string_to_array(${n}, E'\\x1f', E'\\x1e')"
        return arr if pg_type == "text" else f"CAST({arr} AS {pg_type}[])"
    return f"CAST(${n} AS {pg_type}[])"


class Args:
    """Numbered parameters of one statement."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def scalar(self, value: Any, pg_type: str) -> str:
        self.values.append(value)
        return f"CAST(${len(self.values)} AS {pg_type})"

    def array(self, values: list[Any], pg_type: str) -> str:
        self.values.append(param(values))
        return cast(self.values[-1], pg_type, len(self.values))

    def typed_array(self, values: list[Any], pg_type: str) -> str:
        """The list as a typed array, as asyncpg encodes it (for bytea, say)."""
        self.values.append(values)
        return f"CAST(${len(self.values)} AS {pg_type}[])"

    def unnest(self, columns: Sequence[tuple[list[Any], str]]) -> str:
        return "unnest(" + ", ".join(self.array(v, t) for v, t in columns) + ")"


async def in_transaction(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`, inside the unit of work's transaction.

    SQLAlchemy's asyncpg adapter opens the transaction lazily at its first statement; it
    is opened here when no statement ran yet. Either way the connection must report a
    transaction before anything is locked or written: never autocommit a batch."""
    fairy = await conn.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    if getattr(adapted, "_transaction", None) is None:
        await adapted._start_transaction()  # private: SQLAlchemy's asyncpg adapter
    raw = fairy.driver_connection
    if raw is None or not raw.is_in_transaction():
        raise RuntimeError("batch statements must run inside the unit of work's transaction")
    return raw

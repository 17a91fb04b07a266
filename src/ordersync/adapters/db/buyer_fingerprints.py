"""Buyer fingerprints (migration 0012): what the fraud burst rules count, in the order's
own transaction.

Only digests are stored: HMAC-SHA256 under the configured `fingerprint_key` (so a table
leaked without the key cannot be matched against a list of phone numbers), else plain
SHA-256 with a fixed prefix (phone numbers are few enough to enumerate: configure a key).
Changing the key starts the counts afresh: old digests no longer match new ones.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import text

from ordersync.clock import to_us
from ordersync.domain.holds import BuyerActivity, BuyerFingerprint
from ordersync.service.unit_of_work import BuyerFingerprints

if TYPE_CHECKING:
    from ordersync.adapters.db.unit_of_work import _Conn

ADDRESS, PHONE = "address", "phone"
_UNKEYED_PREFIX = b"ordersync.buyer-fingerprint.v1:"
_INSERT = "INSERT INTO buyer_fingerprints (order_id, kind, digest, placed_us)"


class FingerprintDigest:
    """Normalized value -> hex digest, the same in every process of one deployment."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def __call__(self, kind: str, value: str) -> str:
        data = f"{kind}:{value}".encode()
        if self._key is None:
            return hashlib.sha256(_UNKEYED_PREFIX + data).hexdigest()
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never the key
        return f"FingerprintDigest(keyed={self.keyed})"


class SqlBuyerFingerprints(BuyerFingerprints):
    """Writes at once (not at commit) into the unit of work's transaction, so the next
    order of the same group commit already counts this one."""

    def __init__(self, c: _Conn, digest: FingerprintDigest) -> None:
        self._c = c
        self._digest = digest

    async def record(
        self,
        order_id: str,
        placed_at: datetime,
        fingerprint: BuyerFingerprint,
        window: timedelta | None,
    ) -> BuyerActivity:
        digests = {
            kind: self._digest(kind, value)
            for kind, value in ((ADDRESS, fingerprint.address), (PHONE, fingerprint.phone))
            if value is not None
        }
        if not digests:
            return BuyerActivity()
        conn = await self._c.get()
        until = to_us(placed_at)
        params: dict[str, object] = {"o": order_id, "p": until}
        values = []
        for i, (kind, digest) in enumerate(digests.items()):
            values.append(f"(:o, :k{i}, :d{i}, :p)")
            params |= {f"k{i}": kind, f"d{i}": digest}
        rows = ", ".join(values)
        insert = f"{_INSERT} VALUES {rows}"
        # RETURNING names the rows that are new: a fingerprint this order already had
        # was judged when it was recorded, and is not counted again.
        returned = await conn.execute(
            text(f"{insert} ON CONFLICT (order_id, kind, digest) DO NOTHING RETURNING kind"),
            params,
        )
        new = {kind for (kind,) in returned}
        if window is None or not new:
            return BuyerActivity()
        counts = await self._count(order_id, {k: digests[k] for k in new}, until, window)
        return BuyerActivity(
            counts.get(ADDRESS, 0) if ADDRESS in new else None,
            counts.get(PHONE, 0) if PHONE in new else None,
        )

    async def _count(
        self, order_id: str, digests: dict[str, str], until: int, window: timedelta
    ) -> dict[str, int]:
        """Other orders placed in [until - window, until] per kind: one query, one index
        range (kind, digest, placed_us) per fingerprint."""
        conn = await self._c.get()
        params: dict[str, object] = {
            "o": order_id,
            "since": until - window // timedelta(microseconds=1),
            "until": until,
        }
        for i, (kind, digest) in enumerate(sorted(digests.items())):
            params |= {f"k{i}": kind, f"d{i}": digest}
        rows = await conn.execute(text(count_query(len(digests))), params)
        return {kind: int(n) for kind, n in rows}


def count_query(fingerprints: int) -> str:
    """The burst count over `fingerprints` (kind, digest) pairs `:k0/:d0`, `:k1/:d1` ...:
    each one an index range of ix_buyer_fingerprints_digest (kind, digest, placed_us)."""
    where = " OR ".join(f"(kind = :k{i} AND digest = :d{i})" for i in range(fingerprints))
    return (
        f"SELECT kind, COUNT(*) FROM buyer_fingerprints WHERE ({where})"  # noqa: S608 - placeholders only
        " AND placed_us BETWEEN :since AND :until AND order_id <> :o GROUP BY kind"
    )

"""Opaque, time-ordered ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32).

Sorting ids sorts by creation time, which gives stable cursor pagination for free.
"""

from __future__ import annotations

import base64
import os
import time

# RFC 4648 base32 and Crockford's alphabet both list their digits in ascending order, so
# translating one into the other keeps lexicographic order = numeric order.
_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_id(prefix: str) -> str:
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    return f"{prefix}_{base64.b32encode(raw)[:26].translate(_TO_CROCKFORD).decode()}"

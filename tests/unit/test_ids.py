import base64
import os
import random

from ordersync.ids import encode, new_id

_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def _reference(ms: int, rnd: bytes) -> str:
    return base64.b32encode(ms.to_bytes(6, "big") + rnd)[:26].translate(_TO_CROCKFORD).decode()


def test_encoding_matches_rfc4648_base32_in_crockford_alphabet() -> None:
    rng = random.Random(7)
    cases = [(0, bytes(10)), ((1 << 48) - 1, b"\xff" * 10)]
    cases += [(rng.randrange(1 << 48), rng.randbytes(10)) for _ in range(5000)]
    for ms, rnd in cases:
        assert encode(ms, rnd) == _reference(ms, rnd)


def test_ids_sort_by_time() -> None:
    early = encode(1_700_000_000_000, b"\xff" * 10)
    late = encode(1_700_000_000_001, bytes(10))
    assert early < late
    ids = [new_id("evt") for _ in range(100)]
    assert all(i.startswith("evt_") and len(i) == 30 for i in ids)
    assert len(set(ids)) == 100
    assert encode(5, os.urandom(10))[:9] == "000000000"

"""The fast decoding path (orjson) must give exactly what the exact path (stdlib json with
Decimal) gives, and fall back to it whenever a number could lose digits."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.adapters.channels.shopify import decode_order, map_order, parse_body
from ordersync.simulators.shopify_store import OrderFactory, encode


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_fast_and_exact_decoding_agree_on_every_simulated_order(seed: int) -> None:
    """Realistic Shopify bodies decode to the same snapshot on both paths."""
    body = encode(OrderFactory(seed).new_order())

    assert decode_order("shop-eu", body) == map_order("shop-eu", parse_body(body))


def test_a_float_amount_is_decoded_exactly_through_the_slow_path() -> None:
    """`"total_price": 19.999999999999999` keeps every digit, never passes through float."""
    order = json.loads(encode(OrderFactory(7).new_order()))
    body = encode(order).replace(
        f'"total_price":"{order["total_price"]}"'.encode(), b'"total_price":19.999999999999999'
    )

    snap = decode_order("shop-eu", body)

    assert str(snap.totals.total) == "19.999999999999999"


def test_an_id_beyond_64_bits_keeps_every_digit() -> None:
    """A 21-digit order id is too big for orjson; the exact path keeps it whole."""
    order = json.loads(encode(OrderFactory(3).new_order()))
    order["id"] = 123456789012345678901
    body = encode(order)

    snap = decode_order("shop-eu", body)

    assert snap.external_id == "123456789012345678901"


def test_ids_sort_in_creation_order() -> None:
    """Ids made a millisecond apart sort by time, so cursors follow creation order."""
    import time

    from ordersync.ids import new_id

    first = new_id("ord")
    time.sleep(0.002)
    second = new_id("ord")

    assert first < second
    assert len(first) == len("ord_") + 26

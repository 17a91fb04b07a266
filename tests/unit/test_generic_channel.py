"""Generic mapping channels: JSON, XML and CSV documents read through a declarative mapping
(paths, value maps, defaults, transforms), HMAC-SHA256 push verification, and the messy
cases (missing customer, empty SKU, negative amounts, huge ids, non-ASCII, XML entities)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from ordersync.adapters.channels import generic as g
from ordersync.adapters.channels.base import InboundError
from ordersync.adapters.channels.registry import connector_for
from ordersync.config import GenericChannel, settings_from_mapping
from ordersync.domain.order_status import OrderStatus, PaymentStatus

SECRET = "in-house-secret"

JSON_MAPPING: dict[str, Any] = {
    "format": "json",
    "fields": {
        "external_id": "id",
        "status": {"path": "state", "transform": ["strip", "upper"]},
        "total": {"path": "amount_cents", "transform": "cents_to_decimal"},
        "shipping": {"path": "freight", "transform": "decimal"},
        "currency": {"path": "ccy", "default": "CNY"},
        "updated_at": {
            "path": "changed",
            "transform": "datetime",
            "format": "%Y-%m-%d %H:%M:%S",
            "timezone": "+08:00",
        },
        "customer.name": "buyer.name",
        "customer.email": "buyer.email",
        "address.line1": "ship.street",
        "address.city": "ship.city",
        "note": {"path": "remark", "transform": "strip"},
    },
    "lines": {
        "path": "items",
        "fields": {
            "sku": {"path": "sku", "transform": "strip"},
            "name": "title",
            "quantity": "qty",
            "unit_price": "price",
            "total": "line_total",
        },
    },
    "statuses": {
        "NEW": {"status": "pending", "payment": "pending"},
        "PAID": {"status": "paid", "payment": "paid"},
        "SENT": {"status": "shipped", "payment": "paid"},
        "VOID": {"status": "cancelled", "payment": "voided"},
    },
}

XML_MAPPING: dict[str, Any] = {
    "format": "xml",
    "orders": "export/order",
    "fields": {
        "external_id": "@id",
        "status": {"path": "status", "map": {"1": "NEW", "2": "PAID"}},
        "total": "total",
        "customer.name": "customer/name",
        "updated_at": {"path": "modified", "transform": "datetime", "timezone": "UTC"},
    },
    "lines": {
        "path": "lines/line",
        "fields": {"sku": "@sku", "name": "name", "quantity": "qty", "unit_price": "price"},
    },
    "statuses": {"NEW": "pending", "PAID": {"status": "paid", "payment": "paid"}},
}

CSV_MAPPING: dict[str, Any] = {
    "format": "csv",
    "group_by": "order_no",
    "fields": {
        "external_id": "order_no",
        "status": {"path": "status", "default": "PAID"},
        "total": "order_total",
        "customer.name": "buyer",
    },
    "lines": {"fields": {"sku": "sku", "quantity": "qty", "unit_price": "price"}},
    "statuses": {"PAID": {"status": "paid", "payment": "paid"}},
}


def write_mapping(tmp_path: Path, mapping: dict[str, Any], name: str = "map.yaml") -> Path:
    path = tmp_path / name
    text = json.dumps(mapping) if name.endswith(".json") else yaml.safe_dump(mapping)
    path.write_text(text, encoding="utf-8")
    return path


def channel(tmp_path: Path, mapping: dict[str, Any], **extra: Any) -> GenericChannel:
    raw = {
        "id": "erp-inhouse",
        "kind": "generic",
        "mapping": str(write_mapping(tmp_path, mapping)),
        "secret": SECRET,
        **extra,
    }
    (found,) = settings_from_mapping({"channels": [raw]}, env={}).channels
    assert isinstance(found, GenericChannel)
    return found


def order_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": 9_223_372_036_854_775_807,
        "state": " paid ",
        "amount_cents": 25980,
        "freight": "0.00",
        "changed": "2026-11-22 12:00:00",
        "buyer": {"name": "陈小姐", "email": "chen@example.cn"},
        "ship": {"street": "南京西路 1 号", "city": "上海"},
        "remark": "  请尽快发货 ",
        "items": [
            {
                "sku": " OOLONG-1 ",
                "title": "乌龙茶",
                "qty": 2,
                "price": "129.90",
                "line_total": "259.80",
            }
        ],
    }
    doc.update(changes)
    return doc


def push(ch: GenericChannel, doc: Any) -> Any:
    body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    headers = {"x-signature": g.sign_body(SECRET, body)}
    connector = connector_for("generic")
    assert connector.verify(ch, headers, body)
    return connector.parse(ch, headers, body)


# ---- JSON ---------------------------------------------------------------------------------


def test_a_json_order_maps_through_paths_transforms_and_the_value_map(tmp_path: Path) -> None:
    """Dotted paths, cents_to_decimal, strip/upper, a China-time format, lines."""
    snap = push(channel(tmp_path, JSON_MAPPING), order_doc()).snapshot
    assert snap.external_id == "9223372036854775807"  # 2^63 - 1 kept exact
    assert (snap.status, snap.payment_status) == (OrderStatus.PAID, PaymentStatus.PAID)
    assert snap.totals.total == Decimal("259.80")
    assert snap.currency == "CNY"
    assert snap.channel_updated_at == datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
    assert snap.customer.name == "陈小姐"
    assert snap.note == "请尽快发货"
    (line,) = snap.lines
    assert (line.sku, line.quantity, line.unit_price) == ("OOLONG-1", 2, Decimal("129.90"))


def test_the_message_id_is_the_order_id_at_its_update_time(tmp_path: Path) -> None:
    """Two pushes of one order state share a message id, so the inbox dedupes them."""
    msg = push(channel(tmp_path, JSON_MAPPING), order_doc())
    again = push(channel(tmp_path, JSON_MAPPING), order_doc())

    assert msg.message_id.startswith("9223372036854775807@2026-11-22T04:00:00+00:00#")
    assert again.message_id == msg.message_id


def test_a_missing_customer_and_an_empty_sku_are_absent(tmp_path: Path) -> None:
    """No buyer object: no customer; a blank SKU: none."""
    doc = order_doc(buyer=None)
    doc["items"][0]["sku"] = ""
    snap = push(channel(tmp_path, JSON_MAPPING), doc).snapshot
    assert snap.customer is None
    assert snap.lines[0].sku is None


def test_a_negative_amount_is_refused_with_its_path(tmp_path: Path) -> None:
    """A negative line total is a 422 naming the field."""
    doc = order_doc()
    doc["items"][0]["line_total"] = "-1.00"
    with pytest.raises(InboundError) as e:
        push(channel(tmp_path, JSON_MAPPING), doc)
    assert e.value.status == 422
    assert e.value.path == "items[0].line_total"


def test_an_unmapped_status_value_is_refused_not_guessed(tmp_path: Path) -> None:
    """A status outside the value map is an error with the path."""
    with pytest.raises(InboundError) as e:
        push(channel(tmp_path, JSON_MAPPING), order_doc(state="LOST"))
    assert e.value.path == "state"


def test_a_channel_status_override_applies_on_top_of_the_mapping(tmp_path: Path) -> None:
    """statuses in the channel config override the mapping's rows."""
    ch = channel(tmp_path, JSON_MAPPING, statuses={"PAID": {"status": "on_hold"}})
    assert push(ch, order_doc()).snapshot.status is OrderStatus.ON_HOLD


def test_a_time_without_offset_and_without_timezone_is_refused(tmp_path: Path) -> None:
    """A naive time is never assumed to be UTC."""
    mapping = json.loads(json.dumps(JSON_MAPPING))
    del mapping["fields"]["updated_at"]["timezone"]
    with pytest.raises(InboundError, match="no offset"):
        push(channel(tmp_path, mapping), order_doc())


# ---- signatures ---------------------------------------------------------------------------


def test_signatures_verify_in_hex_base64_and_prefixed_forms(tmp_path: Path) -> None:
    """HMAC-SHA256 of the body in the configured header, as hex, base64 or sha256=hex."""
    ch = channel(tmp_path, JSON_MAPPING, signature_header="X-ERP-Signature")
    body = b'{"id": 1}'
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    connector = connector_for("generic")
    for given in (digest.hex(), base64.b64encode(digest).decode(), "sha256=" + digest.hex()):
        assert connector.verify(ch, {"x-erp-signature": given}, body)


def test_forged_signatures_and_channels_without_a_secret_are_refused(tmp_path: Path) -> None:
    """Another key, a changed body, no header, or no configured secret all fail."""
    ch = channel(tmp_path, JSON_MAPPING)
    body = b'{"id": 1}'
    connector = connector_for("generic")
    assert not connector.verify(ch, {"x-signature": g.sign_body("guess", body)}, body)
    assert not connector.verify(ch, {"x-signature": g.sign_body(SECRET, body)}, body + b" ")
    assert not connector.verify(ch, {}, body)
    unsigned = channel(tmp_path, JSON_MAPPING, secret=None)
    assert not connector.verify(unsigned, {"x-signature": g.sign_body(SECRET, body)}, body)


# ---- XML ----------------------------------------------------------------------------------


XML_BODY = """<?xml version="1.0" encoding="utf-8"?>
<export>
  <order id="184467440737095516150">
    <status>2</status>
    <total>88.00</total>
    <modified>2026-11-22T04:00:00</modified>
    <customer><name>Tom &amp; Jerry &lt;茶&gt;</name></customer>
    <lines>
      <line sku="GREEN-1">
        <name>Bi Luo Chun &quot;春&quot;</name><qty>1</qty><price>88.00</price>
      </line>
    </lines>
  </order>
  <order id="2">
    <status>1</status>
    <total>-5</total>
    <lines/>
  </order>
</export>""".encode()


def test_xml_orders_read_attributes_entities_and_value_maps() -> None:
    """Slash paths, @attributes, entities decoded, a one-element list stays a list."""
    mapping = g.parse_mapping(XML_MAPPING)
    good, bad = list(g.read_orders("erp", mapping, XML_BODY))
    snap = good.snapshot
    assert snap is not None
    assert snap.external_id == "184467440737095516150"
    assert snap.status is OrderStatus.PAID
    assert snap.customer is not None
    assert snap.customer.name == "Tom & Jerry <茶>"
    assert [(x.sku, x.name) for x in snap.lines] == [("GREEN-1", 'Bi Luo Chun "春"')]
    assert bad.snapshot is None
    assert bad.error is not None
    assert bad.error.path == "export/order[1].total"


def test_malformed_xml_is_an_error_not_a_crash() -> None:
    """An unclosed tag is a MappingError."""
    with pytest.raises(g.MappingError, match="not valid xml"):
        list(g.read_orders("erp", g.parse_mapping(XML_MAPPING), b"<export><order>"))


# ---- CSV ----------------------------------------------------------------------------------


def test_csv_rows_group_into_orders_and_errors_name_the_row_and_column() -> None:
    """Rows sharing order_no are one order; a bad cell names its row and column."""
    body = (
        "order_no,buyer,order_total,sku,qty,price\n"
        "A1,王五,30.00,TEA-1,1,10.00\n"
        "A1,王五,30.00,TEA-2,2,10.00\n"
        "A2,,5.00,,1,5.00\n"
        "A3,赵六,5.00,TEA-3,lots,5.00\n"
    ).encode()
    a1, a2, a3 = g.read_orders("erp", g.parse_mapping(CSV_MAPPING), body)
    assert a1.rows == (1, 2)
    assert a1.snapshot is not None
    assert [x.sku for x in a1.snapshot.lines] == ["TEA-1", "TEA-2"]
    assert a2.snapshot is not None
    assert a2.snapshot.customer is None
    assert a2.snapshot.lines[0].sku is None
    assert a3.snapshot is None
    assert a3.error is not None
    assert a3.error.path == "row 4.qty"


# ---- the mapping file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "yaml"}, "format"),
        ({"fields": {"external_id": "id"}}, "fields.total: required"),
        ({"fields": {"external_id": "id", "total": "t", "colour": "c"}}, "unknown field"),
        ({"fields": {"external_id": "id", "total": {"path": "t", "transform": "x"}}}, "x"),
        ({"statuses": {"A": {"status": "teleported"}}}, "statuses.A"),
    ],
)
def test_a_wrong_mapping_file_is_refused_naming_the_key(
    change: dict[str, Any], message: str
) -> None:
    """Unknown formats, fields, transforms or statuses are refused with their place."""
    with pytest.raises(g.MappingFileError, match=message):
        g.parse_mapping({**JSON_MAPPING, **change})


def test_json_mapping_files_load_like_yaml_ones(tmp_path: Path) -> None:
    """A .json mapping file is read as JSON."""
    mapping = g.load_mapping(write_mapping(tmp_path, CSV_MAPPING, "m.json"))
    assert mapping.format == "csv"
    assert mapping.group_by == "order_no"

"""A channel described by a declarative mapping file, so a merchant can connect an in-house
system without code. The mapping (YAML or JSON, path given in the channel config) says:

```yaml
format: json            # json | xml | csv | xlsx (rows, as csv; `ordersync import` only)
orders: orders          # where the list of orders is (json/xml); absent: the body is one order
group_by: order_no      # csv: rows with the same value form one order (absent: a row each)
fields:                 # canonical field -> a path, or {path, default, transform, map, ...}
  external_id: id
  status: {path: state, transform: [strip, upper]}
  total: {path: amount_cents, transform: cents_to_decimal}
  currency: {default: CNY}
  updated_at: {path: changed, transform: datetime, format: "%Y-%m-%d %H:%M:%S",
               timezone: "+08:00"}
  customer.name: buyer.name
  address.line1: ship/street        # XML: a simple path; "@attr" reads an attribute
lines:
  path: items           # json/xml: the list of lines; csv: each row is a line
  fields: {sku: sku, name: title, quantity: qty, unit_price: price, total: line_total}
statuses:               # value map: the system's status -> canonical status and payment
  NEW: {status: pending, payment: pending}
  PAID: {status: paid, payment: paid}
```

Transforms: strip, upper, lower, int, decimal, cents_to_decimal, datetime (ISO 8601, or
`format` with `timezone` for times without an offset). Pushes are verified by HMAC-SHA256
of the body (hex or base64, optionally "sha256=" prefixed) in the configured header.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import yaml

from ordersync.adapters.channels import readers as r
from ordersync.adapters.channels.base import (
    Capability,
    HttpRequest,
    HttpResponse,
    InboundError,
    InboundMessage,
    MappingError,
    PullError,
    PullPage,
    StatusRule,
    StatusTable,
    Window,
    statuses_for,
)
from ordersync.config import ChannelConfig, GenericChannel
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderLine, OrderSnapshot, Totals
from ordersync.service.pull import state_message_id

FORMATS = ("json", "xml", "csv", "xlsx")
ROW_FORMATS = ("csv", "xlsx")  # a row per line, grouped into orders by `group_by`
TRANSFORMS = ("strip", "upper", "lower", "int", "decimal", "cents_to_decimal", "datetime")
ORDER_FIELDS = frozenset(
    {
        "external_id", "name", "status", "payment_status", "currency", "total", "subtotal",
        "shipping", "tax", "discount", "note", "placed_at", "updated_at", "message_id",
        "customer.external_id", "customer.name", "customer.email", "customer.phone",
        "address.name", "address.company", "address.line1", "address.line2", "address.city",
        "address.region", "address.postal_code", "address.country_code", "address.phone",
    }
)  # fmt: skip
LINE_FIELDS = frozenset(
    {"sku", "name", "quantity", "unit_price", "discount", "total", "external_id",
     "product_id", "variant_id"}
)  # fmt: skip
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


class MappingFileError(ValueError):
    """The mapping file itself is wrong (unknown format, field, transform...)."""


# ---- the mapping ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSpec:
    path: str | None
    default: Any = None
    transforms: tuple[str, ...] = ()
    values: Mapping[str, Any] | None = None  # a value map applied after the transforms
    time_format: str | None = None
    zone: tzinfo | None = None


@dataclass(frozen=True, slots=True)
class Mapping_:
    format: str
    orders: str | None
    group_by: str | None
    fields: Mapping[str, FieldSpec]
    lines_path: str | None
    line_fields: Mapping[str, FieldSpec]
    statuses: StatusTable
    csv_delimiter: str = ","
    notes: tuple[str, ...] = field(default_factory=tuple)


def _zone(value: Any, where: str) -> tzinfo:
    if value in ("UTC", "Z", "+00:00"):
        return UTC
    if isinstance(value, str) and (m := _OFFSET.match(value)):
        sign = -1 if m.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    if value == "Asia/Shanghai":
        return timezone(timedelta(hours=8), "Asia/Shanghai")
    raise MappingFileError(f"{where}: timezone must be UTC or an offset like +08:00")


def _spec(raw: Any, where: str) -> FieldSpec:
    if isinstance(raw, str):
        return FieldSpec(raw)
    if not isinstance(raw, Mapping):
        raise MappingFileError(f"{where}: expected a path or an object")
    unknown = set(raw) - {"path", "default", "transform", "map", "format", "timezone"}
    if unknown:
        raise MappingFileError(f"{where}: unknown keys {sorted(unknown)}")
    transforms = raw.get("transform") or ()
    transforms = (transforms,) if isinstance(transforms, str) else tuple(transforms)
    for t in transforms:
        if t not in TRANSFORMS:
            raise MappingFileError(f"{where}: unknown transform {t!r} (known: {TRANSFORMS})")
    values = raw.get("map")
    if values is not None and not isinstance(values, Mapping):
        raise MappingFileError(f"{where}.map: expected an object")
    path = raw.get("path")
    if path is None and "default" not in raw:
        raise MappingFileError(f"{where}: needs a path or a default")
    return FieldSpec(
        path=str(path) if path is not None else None,
        default=raw.get("default"),
        transforms=transforms,
        values={str(k): v for k, v in values.items()} if values else None,
        time_format=raw.get("format"),
        zone=_zone(raw["timezone"], f"{where}.timezone") if "timezone" in raw else None,
    )


def parse_mapping(data: Any, source: str = "mapping") -> Mapping_:
    """A mapping from its decoded YAML/JSON; MappingFileError names what is wrong."""
    if not isinstance(data, Mapping):
        raise MappingFileError(f"{source}: expected an object")
    fmt = data.get("format", "json")
    if fmt not in FORMATS:
        raise MappingFileError(f"{source}.format: expected one of {FORMATS}, got {fmt!r}")
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, Mapping):
        raise MappingFileError(f"{source}.fields: expected an object")
    fields = {}
    for name, raw in raw_fields.items():
        if name not in ORDER_FIELDS:
            raise MappingFileError(f"{source}.fields.{name}: unknown field")
        fields[name] = _spec(raw, f"{source}.fields.{name}")
    for needed in ("external_id", "total"):
        if needed not in fields:
            raise MappingFileError(f"{source}.fields.{needed}: required")
    lines = data.get("lines") or {}
    if not isinstance(lines, Mapping):
        raise MappingFileError(f"{source}.lines: expected an object")
    line_fields = {}
    for name, raw in (lines.get("fields") or {}).items():
        if name not in LINE_FIELDS:
            raise MappingFileError(f"{source}.lines.fields.{name}: unknown field")
        line_fields[name] = _spec(raw, f"{source}.lines.fields.{name}")
    if line_fields and not {"quantity", "unit_price"} <= set(line_fields):
        raise MappingFileError(f"{source}.lines.fields: quantity and unit_price are required")
    rules = {}
    for value, raw in (data.get("statuses") or {}).items():
        try:
            if isinstance(raw, str):
                rules[str(value)] = StatusRule(OrderStatus(raw))
            else:
                payment = raw.get("payment")
                rules[str(value)] = StatusRule(
                    OrderStatus(raw["status"]),
                    PaymentStatus(payment) if payment else None,
                    bool(raw.get("ignore", False)),
                )
        except (KeyError, ValueError, TypeError, AttributeError):
            raise MappingFileError(f"{source}.statuses.{value}: bad status rule") from None
    return Mapping_(
        format=fmt,
        orders=data.get("orders"),
        group_by=data.get("group_by"),
        fields=fields,
        lines_path=lines.get("path"),
        line_fields=line_fields,
        statuses=StatusTable(rules),
        csv_delimiter=str(data.get("delimiter", ",")),
    )


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime: float) -> Mapping_:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise MappingFileError(f"{path}: not valid YAML/JSON: {e}") from None
    return parse_mapping(data, path)


def load_mapping(path: Path) -> Mapping_:
    """The mapping file, parsed once per modification."""
    try:
        mtime = path.stat().st_mtime
    except OSError as e:
        raise MappingFileError(f"{path}: cannot read the mapping file: {e}") from None
    return _load_cached(str(path), mtime)


# ---- documents: JSON, XML, CSV as nested values ------------------------------------------


def _xml_value(element: ET.Element) -> Any:
    children = list(element)
    if not children and not element.attrib:
        return element.text or ""
    out: dict[str, Any] = {f"@{k}": v for k, v in element.attrib.items()}
    if not children:
        out["#text"] = element.text or ""
        return out
    for child in children:
        value = _xml_value(child)
        if child.tag in out:
            existing = out[child.tag]
            out[child.tag] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            out[child.tag] = value
    return out


def decode_document(body: bytes, fmt: str, sheet: str | None = None) -> Any:
    """The body as nested dicts/lists (XML: repeated tags become lists, "@attr" attributes);
    CSV: a list of {column: text} rows; XLSX: (sheet row number, row) pairs of a sheet."""
    if fmt == "xlsx":
        return spreadsheet_rows(body, sheet)
    try:
        if fmt == "xml":
            # Merchant systems' bodies, verified by HMAC first; expat refuses external
            # entities and bounds expansion.
            root = ET.fromstring(body)  # noqa: S314
            return {root.tag: _xml_value(root)}
        text = body.decode("utf-8-sig")
        if fmt == "csv":
            return list(csv.DictReader(io.StringIO(text, newline="")))
        return json.loads(text, parse_float=Decimal)
    except (ET.ParseError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise MappingError("", f"not valid {fmt}: {e}") from None


# ---- spreadsheets -----------------------------------------------------------------------

# Excel keeps 15 significant digits; a number read back as a float carries binary noise
# beyond them (19.9 stored as 19.899999999999999, a formula's 0.1+0.2 as
# 0.30000000000000004), so numbers are written out to 15 digits, never via float maths.
_EXCEL_DIGITS = 15


class SheetNotFound(ValueError):
    """`--sheet` names no sheet of the workbook."""


def excel_number(value: float) -> str:
    """A number cell as the text Excel shows (up to 15 significant digits, no exponent)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return format(Decimal(format(value, f".{_EXCEL_DIGITS}g")), "f")


def _cell_value(value: Any) -> Any:
    """A cell as a CSV reader would give it: text, except that times stay datetimes (the
    mapping's timezone, or its `datetime` transform, says which zone a naive one is in)."""
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: bool is an int
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return excel_number(value)
    if isinstance(value, datetime):
        return value
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


def spreadsheet_rows(body: bytes, sheet: str | None = None) -> list[tuple[int, dict[Any, Any]]]:
    """The rows of an .xlsx sheet (the first, or `sheet`) as (number, {header: value}): the
    first row is the header (number 0), data rows count from 1 as in CSV; blank rows are
    left out, keeping their numbers, so an error names the row the merchant sees. Cells
    beyond the header's columns go under the key None, as csv.DictReader puts them."""
    from openpyxl import load_workbook  # imported here: only `import FILE.xlsx` needs it

    try:
        # read_only streams the sheet; data_only gives formulas' cached values.
        book = load_workbook(io.BytesIO(body), read_only=True, data_only=True)
    except Exception as e:  # zipfile, XML and openpyxl's own errors: not a workbook
        raise MappingError("", f"not a readable .xlsx workbook: {type(e).__name__}: {e}") from None
    try:
        names = list(book.sheetnames)
        if sheet is not None and sheet not in names:
            raise SheetNotFound(f"no sheet {sheet!r} in the workbook (sheets: {', '.join(names)})")
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        rows = ws.iter_rows(values_only=True)
        header_cells = next(rows, None)
        if header_cells is None:
            return []
        header = ["" if c is None else str(c).strip() for c in header_cells]
        out: list[tuple[int, dict[Any, Any]]] = []
        for n, cells in enumerate(rows, start=1):
            if all(c is None or (isinstance(c, str) and not c.strip()) for c in cells):
                continue
            row: dict[Any, Any] = {h: "" for h in header if h}
            for i, c in enumerate(cells):
                if i < len(header) and header[i]:
                    row[header[i]] = _cell_value(c)
                elif c is not None and c != "":
                    row.setdefault(None, []).append(_cell_value(c))
            out.append((n, row))
        return out
    finally:
        book.close()


def _split(path: str) -> list[str]:
    return [p for p in re.split(r"[/.]", path) if p] if "/" in path else path.split(".")


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted (JSON) or slash (XML) path; None if absent. Numeric parts index
    lists; a one-element XML value asked for as a list is a list of one."""
    current = doc
    for part in _split(path):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            current = current[index] if index < len(current) else None
        else:
            return None
        if current is None:
            return None
    if isinstance(current, Mapping) and "#text" in current:
        return current["#text"]
    return current


# ---- values -----------------------------------------------------------------------------


def _apply(spec: FieldSpec, raw: Any, where: str) -> Any:
    value = raw
    if value is None or value == "":
        value = spec.default
    if value is None or value == "":
        return None
    for t in spec.transforms:
        if t in ("strip", "upper", "lower"):
            if isinstance(value, datetime):  # a spreadsheet's time cell: nothing to trim
                continue
            if not isinstance(value, str):
                raise MappingError(where, f"{t}: expected text, got {value!r}")
            value = getattr(value, t)()
        elif t == "int":
            value = r.integer(value, where)
        elif t == "decimal":
            value = r.money(value, where, negative=True)
        elif t == "cents_to_decimal":
            value = Decimal(r.integer(value, where)).scaleb(-2)
        elif t == "datetime":
            value = _datetime(value, spec, where)
    if spec.values is not None:
        key = str(value)
        if key not in spec.values:
            raise MappingError(where, f"value {value!r} is not in the map ({sorted(spec.values)})")
        value = spec.values[key]
    return value


def _aware(value: datetime, zone: tzinfo | None, where: str) -> datetime:
    """A time as tz-aware UTC; a naive one (a spreadsheet cell) is in the mapping's zone."""
    if value.utcoffset() is None:
        if zone is None:
            raise MappingError(where, f"time has no offset and the mapping no timezone: {value}")
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def _datetime(value: Any, spec: FieldSpec, where: str) -> datetime:
    if isinstance(value, datetime):
        return _aware(value, spec.zone, where)
    if not isinstance(value, str):
        raise MappingError(where, f"expected a time, got {value!r}")
    if spec.time_format is None:
        return r.timestamp(value, where, naive_zone=spec.zone)
    try:
        parsed = datetime.strptime(value.strip(), spec.time_format)
    except ValueError:
        raise MappingError(where, f"{value!r} does not match {spec.time_format!r}") from None
    if parsed.utcoffset() is None:
        if spec.zone is None:
            raise MappingError(where, f"time has no offset and the mapping no timezone: {value!r}")
        parsed = parsed.replace(tzinfo=spec.zone)
    return parsed.astimezone(UTC)


class _Reader:
    """Reads one order's fields from its document, naming each field in its errors."""

    def __init__(self, doc: Any, specs: Mapping[str, FieldSpec], where: str) -> None:
        self.doc, self.specs, self.where = doc, specs, where

    def path_of(self, name: str) -> str:
        spec = self.specs.get(name)
        return r.at(self.where, spec.path if spec and spec.path else name)

    def get(self, name: str) -> Any:
        spec = self.specs.get(name)
        if spec is None:
            return None
        raw = lookup(self.doc, spec.path) if spec.path else None
        return _apply(spec, raw, self.path_of(name))

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        return r.text(value if isinstance(value, str) else str(value), self.path_of(name))

    def required_text(self, name: str) -> str:
        found = self.text(name)
        if found is None:
            raise MappingError(self.path_of(name), "missing")
        return found

    def money(self, name: str, *, required: bool = False) -> Decimal | None:
        value = self.get(name)
        if value is None:
            if required:
                raise MappingError(self.path_of(name), "missing")
            return None
        return r.money(value, self.path_of(name))

    def time(self, name: str) -> datetime | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, datetime):
            spec = self.specs.get(name)
            return _aware(value, spec.zone if spec else None, self.path_of(name))
        return r.timestamp(value, self.path_of(name))


def map_order(
    channel_id: str,
    mapping: Mapping_,
    doc: Any,
    line_docs: Sequence[Any] | None = None,
    *,
    statuses: StatusTable | None = None,
    where: str = "",
    line_wheres: Sequence[str] | None = None,
) -> OrderSnapshot:
    """One order from its document. `line_docs`: the documents of its lines (CSV rows),
    `line_wheres` where each is (for errors)."""
    rd = _Reader(doc, mapping.fields, where)
    table = statuses or mapping.statuses
    raw_status = rd.text("status")
    if "status" not in mapping.fields:
        rule = StatusRule(OrderStatus.PENDING)  # a system without statuses: new orders
    elif raw_status is None:
        raise MappingError(rd.path_of("status"), "missing")
    elif table.rules:
        rule = table.rule(raw_status, rd.path_of("status"))
    else:
        try:
            rule = StatusRule(OrderStatus(raw_status))
        except ValueError:
            raise MappingError(rd.path_of("status"), f"unknown status {raw_status!r}") from None
    payment_text = rd.text("payment_status")
    if payment_text is not None:
        try:
            payment = PaymentStatus(payment_text)
        except ValueError:
            raise MappingError(
                rd.path_of("payment_status"), f"unknown payment status {payment_text!r}"
            ) from None
    elif rule.payment is not None:
        payment = rule.payment
    else:
        secured = rule.status in (OrderStatus.PAID, OrderStatus.SHIPPED)
        payment = PaymentStatus.PAID if secured else PaymentStatus.PENDING
    if line_docs is None:
        if mapping.lines_path:
            found = lookup(doc, mapping.lines_path)
            line_docs = found if isinstance(found, list) else ([] if found is None else [found])
        else:
            line_docs = []
    lines_where = r.at(where, mapping.lines_path or "lines")
    lines: tuple[OrderLine, ...] = ()
    if mapping.line_fields:
        wheres = line_wheres or [f"{lines_where}[{i}]" for i in range(len(line_docs))]
        lines = tuple(_line(mapping, d, w) for d, w in zip(line_docs, wheres, strict=True))
    customer = Customer(
        external_id=rd.text("customer.external_id"),
        email=rd.text("customer.email"),
        name=rd.text("customer.name"),
        phone=rd.text("customer.phone"),
    )
    address = Address(
        name=rd.text("address.name"),
        company=rd.text("address.company"),
        line1=rd.text("address.line1"),
        line2=rd.text("address.line2"),
        city=rd.text("address.city"),
        region=rd.text("address.region"),
        postal_code=rd.text("address.postal_code"),
        country_code=rd.text("address.country_code"),
        phone=rd.text("address.phone"),
    )
    currency = rd.text("currency") or "CNY"
    return OrderSnapshot(
        channel_id=channel_id,
        external_id=rd.required_text("external_id"),
        name=rd.text("name"),
        currency=r.currency(currency, rd.path_of("currency")),
        totals=Totals(
            subtotal=rd.money("subtotal"),
            shipping=rd.money("shipping"),
            tax=rd.money("tax"),
            discount=rd.money("discount"),
            total=rd.money("total", required=True) or Decimal(0),
        ),
        lines=lines,
        status=rule.status,
        payment_status=payment,
        customer=None if customer == Customer() else customer,
        shipping_address=None if address == Address() else address,
        note=rd.text("note"),
        placed_at=rd.time("placed_at"),
        channel_updated_at=rd.time("updated_at"),
    )


def _line(mapping: Mapping_, doc: Any, where: str) -> OrderLine:
    rd = _Reader(doc, mapping.line_fields, where)
    qty_value = rd.get("quantity")
    if qty_value is None:
        raise MappingError(rd.path_of("quantity"), "missing")
    quantity = r.quantity(qty_value, rd.path_of("quantity"))
    price = rd.money("unit_price", required=True) or Decimal(0)
    discount = rd.money("discount") or Decimal(0)
    total = rd.money("total")
    if total is None:
        total = r.EXACT.subtract(r.EXACT.multiply(price, quantity), discount)
    return OrderLine(
        sku=rd.text("sku"),
        name=rd.text("name"),
        quantity=quantity,
        unit_price=price,
        discount=discount,
        total=total,
        external_id=rd.text("external_id"),
        product_id=rd.text("product_id"),
        variant_id=rd.text("variant_id"),
    )


# ---- many orders: documents and CSV rows ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parsed:
    """One order read from a body or file: the snapshot, or the error; `rows` are the CSV
    row numbers (1 = the first data row; the header is row 0) it came from."""

    snapshot: OrderSnapshot | None
    raw: Any
    rows: tuple[int, ...] = ()
    error: MappingError | None = None


def read_orders(
    channel_id: str,
    mapping: Mapping_,
    body: bytes,
    statuses: StatusTable | None = None,
    *,
    sheet: str | None = None,
) -> Iterator[Parsed]:
    """Every order in a body (the list at `orders`, the body itself, or CSV/XLSX row
    groups; `sheet`: which sheet of a workbook, else its first)."""
    doc = decode_document(body, mapping.format, sheet)
    if mapping.format == "csv":
        yield from _csv_orders(channel_id, mapping, list(enumerate(doc, start=1)), statuses)
        return
    if mapping.format == "xlsx":
        yield from _csv_orders(channel_id, mapping, doc, statuses)
        return
    if mapping.orders:
        found = lookup(doc, mapping.orders)
        docs = found if isinstance(found, list) else ([] if found is None else [found])
        base = mapping.orders
    else:
        docs, base = [doc], ""
    for i, d in enumerate(docs):
        where = f"{base}[{i}]" if base else ""
        try:
            yield Parsed(map_order(channel_id, mapping, d, statuses=statuses, where=where), d)
        except MappingError as e:
            yield Parsed(None, d, error=e)


def _csv_orders(
    channel_id: str,
    mapping: Mapping_,
    rows: list[tuple[int, dict[Any, Any]]],
    statuses: StatusTable | None,
) -> Iterator[Parsed]:
    """Numbered rows (CSV or a sheet) grouped into orders."""
    groups: dict[str, list[tuple[int, dict[Any, Any]]]] = {}
    for n, row in rows:
        key = str(row.get(mapping.group_by) or f"#row{n}") if mapping.group_by else f"#row{n}"
        groups.setdefault(key, []).append((n, row))
    for members in groups.values():
        numbers = tuple(n for n, _ in members)
        first_n, first = members[0]
        try:
            for n, row in members:
                if None in row:  # more cells than the header has columns
                    raise MappingError(f"row {n}", "more cells than columns")
            snap = map_order(
                channel_id,
                mapping,
                first,
                [row for _, row in members] if mapping.line_fields else [],
                statuses=statuses,
                where=f"row {first_n}",
                line_wheres=[f"row {n}" for n, _ in members],
            )
            yield Parsed(snap, [row for _, row in members], numbers)
        except MappingError as e:
            yield Parsed(None, [row for _, row in members], numbers, e)


def message_id(snapshot: OrderSnapshot, body: bytes) -> str:
    """As pulls key orders (`<external id>@<updated time>#<state hash>`, so two states in the
    same second stay two), else a digest of the body."""
    if snapshot.channel_updated_at is not None:
        return state_message_id(str(snapshot.external_id), snapshot.channel_updated_at, snapshot)
    return f"{snapshot.external_id}#{hashlib.sha256(body).hexdigest()[:16]}"


# ---- the connector ----------------------------------------------------------------------


def verify_signature(secret: str, body: bytes, given: str | None) -> bool:
    """HMAC-SHA256 of the body, hex or base64, optionally prefixed "sha256="."""
    if not secret or not given:
        return False
    given = given.strip()
    if given.lower().startswith("sha256="):
        given = given[7:]
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    if hmac.compare_digest(digest.hex().encode(), given.lower().encode()):
        return True
    return hmac.compare_digest(base64.b64encode(digest), given.encode())


def sign_body(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class GenericConnector:
    """Pushes in the channel's mapping format; bulk import reuses `read_orders`."""

    kind = "generic"
    capabilities = frozenset({Capability.PUSH})
    default_statuses = StatusTable({})

    def mapping(self, channel: ChannelConfig) -> Mapping_:
        assert isinstance(channel, GenericChannel)
        return load_mapping(channel.mapping)

    def statuses(self, channel: ChannelConfig) -> StatusTable:
        return statuses_for(self.mapping(channel).statuses, channel)

    def verify(self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> bool:
        assert isinstance(channel, GenericChannel)
        if channel.secret is None:
            return False
        given = headers.get(channel.signature_header.lower())
        return verify_signature(channel.secret.get_secret_value(), body, given)

    def parse(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> InboundMessage:
        assert isinstance(channel, GenericChannel)
        try:
            mapping = self.mapping(channel)
        except MappingFileError as e:
            raise InboundError(500, "mapping_error", str(e)) from None
        try:
            parsed = list(read_orders(channel.id, mapping, body, self.statuses(channel)))
        except MappingError as e:
            raise InboundError(422, "invalid_payload", str(e), path=e.path) from None
        if len(parsed) != 1:
            raise InboundError(
                422, "invalid_payload", f"expected one order per push, got {len(parsed)}"
            )
        (one,) = parsed
        if one.error is not None:
            raise InboundError(422, "invalid_payload", str(one.error), path=one.error.path)
        assert one.snapshot is not None
        kept = {channel.signature_header.lower(): "verified"}
        return InboundMessage(
            message_id(one.snapshot, body), "generic", one.snapshot, orjson.dumps(kept).decode()
        )

    def pull_request(
        self, channel: ChannelConfig, window: Window, page: int, page_size: int
    ) -> HttpRequest:
        raise PullError("generic channels are pushed or imported, not pulled")

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        raise PullError("generic channels are pushed or imported, not pulled")


# ---- bulk import ------------------------------------------------------------------------

IMPORT_POLICIES = ("reject-file", "skip-bad-rows", "reject-bad-rows")
_ROW_PATH = re.compile(r"^row (\d+)(?:\.(.*))?$")
_INDEX_PATH = re.compile(r"^[^\[]*\[(\d+)\](?:\.(.*))?$")


@dataclass(frozen=True, slots=True)
class RowError:
    """One refused row: its number (CSV: 1 = first data row; JSON/XML: the order's
    position, from 1), the field, and the problem."""

    row: int
    field: str
    problem: str


@dataclass(frozen=True, slots=True)
class ImportPlan:
    good: tuple[Parsed, ...]
    bad: tuple[Parsed, ...]
    errors: tuple[RowError, ...]


def row_error(parsed: Parsed, position: int) -> RowError:
    """Where a refused order's error points, as (row, field, problem)."""
    assert parsed.error is not None
    path, problem = parsed.error.path, parsed.error.problem
    if m := _ROW_PATH.match(path):
        return RowError(int(m.group(1)), m.group(2) or "", problem)
    if parsed.rows:
        return RowError(parsed.rows[0], path, problem)
    if m := _INDEX_PATH.match(path):
        return RowError(int(m.group(1)) + 1, m.group(2) or "", problem)
    return RowError(position, path, problem)


def plan_import(
    channel_id: str,
    mapping: Mapping_,
    body: bytes,
    statuses: StatusTable | None = None,
    *,
    sheet: str | None = None,
) -> ImportPlan:
    """Every order of a file, split into mappable ones and refused ones with their rows.
    A document that cannot be read at all is one error on row 0; an unknown `sheet` raises
    SheetNotFound (a usage error, not a bad file)."""
    try:
        parsed = list(read_orders(channel_id, mapping, body, statuses, sheet=sheet))
    except MappingError as e:
        return ImportPlan((), (), (RowError(0, e.path, e.problem),))
    good = tuple(p for p in parsed if p.error is None)
    bad = tuple(p for p in parsed if p.error is not None)
    errors = tuple(row_error(p, i) for i, p in enumerate(parsed, start=1) if p.error is not None)
    return ImportPlan(good, bad, errors)

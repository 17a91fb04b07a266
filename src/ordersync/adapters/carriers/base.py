"""The carrier connector interface, its small types, and the registry of connectors by kind.

A connector is stateless and shared by every carrier account of its kind; each call gets
the account (`CarrierAccount`: id, kind, endpoint, credentials). It is sans-I/O: it builds
`CarrierRequest`s and reads `CarrierResponse`s, the caller does the HTTP. A callback is
verified and parsed from the raw body and headers; the answer the carrier expects comes
from `ack`.

Third-party connectors register under the entry-point group `ordersync.carriers` (name =
kind, value = a connector object or a class that builds one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, runtime_checkable

from ordersync.domain.shipments import MappingTable, TrackingUpdate

PLUGIN_GROUP = "ordersync.carriers"
# Chinese aggregators give local times without an offset: Beijing time.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")


class CarrierError(Exception):
    """A carrier answer we cannot use (malformed, or a refusal)."""


class CallbackRejected(Exception):
    """An inbound callback we refuse: `status` is the HTTP answer, `code` the problem type."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code  # "signature_missing" | "signature_invalid" | "malformed"
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CarrierAccount:
    """One configured carrier: what a connector needs to talk to it."""

    carrier_id: str
    kind: str
    endpoint: str
    # Secrets: kept out of the repr, which ends up in log lines and tracebacks.
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    def secret(self, name: str) -> str:
        try:
            return self.credentials[name]
        except KeyError:
            raise CarrierError(
                f"carrier {self.carrier_id!r}: credential {name!r} missing"
            ) from None


@dataclass(frozen=True, slots=True)
class CarrierRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class CarrierResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """What we answer a carrier's callback with."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Party:
    name: str
    phone: str
    province: str
    city: str
    district: str
    address: str
    postcode: str = ""
    country: str = "CN"


@dataclass(frozen=True, slots=True)
class Item:
    name: str
    quantity: int
    weight_kg: Decimal = Decimal("0")


@dataclass(frozen=True, slots=True)
class Booking:
    """A waybill to book: the order, who from and to, what, how heavy and how big."""

    order_id: str
    carrier_code: str  # the aggregator's code of the real carrier ("SF", "yuantong")
    sender: Party
    recipient: Party
    items: tuple[Item, ...]
    weight_kg: Decimal
    volume_cm3: Decimal = Decimal("0")
    service: str = ""  # service level / product, in the carrier's terms
    remark: str = ""


@dataclass(frozen=True, slots=True)
class BookingResult:
    order_id: str
    tracking_number: str
    carrier_code: str
    carrier_ref: str = ""  # the carrier's own id of the booking
    label_url: str = ""
    pickup_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Waybill:
    """A booked parcel, as the carrier knows it: for cancelling and polling."""

    order_id: str
    tracking_number: str
    carrier_code: str
    carrier_ref: str = ""  # the carrier's own id of the booking (BookingResult.carrier_ref)


@runtime_checkable
class CancellingConnector(Protocol):
    """A connector that can cancel a booked waybill with the carrier (optional)."""

    def build_cancel_request(self, account: CarrierAccount, waybill: Waybill) -> CarrierRequest: ...

    def parse_cancel_response(self, waybill: Waybill, response: CarrierResponse) -> None:
        """Raise `CarrierError` unless the carrier cancelled (or had already cancelled) it."""
        ...


@runtime_checkable
class PollingConnector(Protocol):
    """A connector that can query tracking on demand (optional): polling for carriers
    without push. `poll_batch` parcels fit in one query."""

    @property
    def poll_batch(self) -> int: ...

    def build_poll_request(
        self, account: CarrierAccount, waybills: Sequence[Waybill]
    ) -> CarrierRequest: ...

    def parse_poll_response(
        self,
        account: CarrierAccount,
        waybills: Sequence[Waybill],
        response: CarrierResponse,
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        """The parcels the carrier answered for; raise `CarrierError` for a refusal."""
        ...


@runtime_checkable
class CarrierConnector(Protocol):
    """What every carrier format implements."""

    @property
    def kind(self) -> str: ...

    @property
    def mapping(self) -> MappingTable: ...

    def verify_callback(
        self, account: CarrierAccount, body: bytes, headers: Mapping[str, str]
    ) -> None:
        """Raise `CallbackRejected` unless the callback is signed by this account's secret."""
        ...

    def parse_callback(
        self,
        account: CarrierAccount,
        body: bytes,
        headers: Mapping[str, str],
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        """Verify, then parse and map a callback (`mapping` overrides the default table)."""
        ...

    def ack(
        self,
        account: CarrierAccount,
        ok: bool = True,
        reason: str = "",
        *,
        now: datetime | None = None,
    ) -> Ack:
        """The body and content type the carrier expects in answer to a callback."""
        ...

    def build_booking_request(
        self, account: CarrierAccount, booking: Booking
    ) -> CarrierRequest: ...

    def parse_booking_response(
        self, booking: Booking, response: CarrierResponse
    ) -> BookingResult: ...

    def build_subscription_request(
        self,
        account: CarrierAccount,
        tracking_number: str,
        carrier_code: str,
        callback_url: str,
    ) -> CarrierRequest: ...

    def parse_subscription_response(self, response: CarrierResponse) -> None:
        """Raise `CarrierError` unless the carrier accepted the subscription."""
        ...


_ESCAPES = re.compile(rb"(?:%[0-9A-Fa-f]{2})+")


def _unescape(match: re.Match[bytes]) -> bytes:
    return bytes.fromhex(match.group().replace(b"%", b"").decode("ascii"))


def _unquote_plus(raw: bytes) -> str:
    raw = raw.replace(b"+", b" ")
    if b"%" not in raw:
        return raw.decode("utf-8")
    # CJK text is mostly escapes and urllib decodes them one by one in Python, which made
    # form decoding the bulk of a callback's cost. Let the C `unicode_escape` codec do it:
    # %HH -> \xHH -> U+00HH, then latin-1 gives back the bytes.
    try:
        text = raw.replace(b"\\", b"\\\\").replace(b"%", b"\\x").decode("unicode_escape")
    except UnicodeDecodeError:  # a stray "%" that is not an escape: the careful path
        return _ESCAPES.sub(_unescape, raw).decode("utf-8")
    return text.encode("latin-1").decode("utf-8")


def read_form(body: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body; the first value of a repeated field."""
    fields: dict[str, str] = {}
    try:
        for pair in body.split(b"&"):
            if not pair:
                continue
            name, _, value = pair.partition(b"=")
            fields.setdefault(_unquote_plus(name), _unquote_plus(value))
    except UnicodeDecodeError as e:
        raise CallbackRejected(400, "malformed", f"form is not UTF-8: {e}") from e
    return fields


def callback_id(kind: str, body: bytes) -> str:
    """A stable id for a callback without one of its own: the hash of its exact bytes."""
    return f"{kind}:{hashlib.sha256(body).hexdigest()[:32]}"


class PluginError(Exception):
    pass


def _builtin() -> dict[str, CarrierConnector]:
    from ordersync.adapters.carriers.generic import GenericConnector
    from ordersync.adapters.carriers.kdniao import KdniaoConnector
    from ordersync.adapters.carriers.kuaidi100 import Kuaidi100Connector

    return {
        "kdniao": KdniaoConnector(),
        "kuaidi100": Kuaidi100Connector(),
        "generic": GenericConnector(),
    }


REGISTRY: dict[str, CarrierConnector] = {}


def _load(ep: EntryPoint) -> CarrierConnector:
    try:
        obj = ep.load()
    except Exception as e:
        raise PluginError(f"carrier plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
    if isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, CarrierConnector):
        raise PluginError(f"carrier plugin {ep.name!r} ({ep.value}) is not a CarrierConnector")
    if obj.kind != ep.name:
        raise PluginError(f"carrier plugin {ep.name!r} declares kind {obj.kind!r}")
    return obj


def discover(
    group: str = PLUGIN_GROUP, *, found: Callable[[], list[EntryPoint]] | None = None
) -> dict[str, CarrierConnector]:
    """Load every installed plugin connector (built-ins win a name clash)."""
    builtin = registry()
    eps = found() if found is not None else list(entry_points(group=group))
    return {ep.name: _load(ep) for ep in eps if ep.name not in builtin}


def registry() -> dict[str, CarrierConnector]:
    """The built-in connectors by kind (created on first use)."""
    if not REGISTRY:
        REGISTRY.update(_builtin())
    return REGISTRY


def connector_for(kind: str) -> CarrierConnector:
    found = registry().get(kind)
    if found is None:
        for ep in entry_points(group=PLUGIN_GROUP, name=kind):
            found = REGISTRY[kind] = _load(ep)
            break
    if found is None:
        raise PluginError(f"no connector for carrier kind {kind!r}")
    return found

"""Strict little readers the connectors share: each takes a value and its path, returns the
typed value or raises `MappingError(path, problem)`. Nothing is guessed or invented; ids and
amounts never pass through float."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, InvalidOperation
from typing import Any

from ordersync.adapters.channels.shopify import MappingError
from ordersync.domain.orders import Address

# Arithmetic that traps instead of rounding: a total that needs rounding is a bug to see.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, InvalidOperation])

_AMOUNT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_INT = re.compile(r"-?[0-9]+")


def at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def obj(value: Any, path: str) -> Mapping[str, Any] | None:
    if value is None or value == "":
        return None
    if not isinstance(value, Mapping):
        raise MappingError(path, f"expected an object, got {type(value).__name__}")
    return value


def required_obj(value: Any, path: str) -> Mapping[str, Any]:
    found = obj(value, path)
    if found is None:
        raise MappingError(path, "missing")
    return found


def items(value: Any, path: str) -> list[Any]:
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise MappingError(path, f"expected a list, got {type(value).__name__}")
    return value


def required(o: Mapping[str, Any], key: str, path: str = "") -> Any:
    value = o.get(key)
    if value is None or value == "":
        raise MappingError(at(path, key), "missing")
    return value


def text(value: Any, path: str) -> str | None:
    """A string as sent (non-ASCII untouched); empty means absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MappingError(path, f"expected a string, got {type(value).__name__}")
    if "\x00" in value:
        raise MappingError(path, "NUL characters are not accepted")
    return value


def ident(value: Any, path: str) -> str | None:
    """A platform id as an opaque string; 0 and "" (WooCommerce's "none") are absent."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise MappingError(path, f"expected an integer or string id, got {value!r}")


def integer(value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    raise MappingError(path, f"expected an integer, got {value!r}")


def quantity(value: Any, path: str) -> int:
    n = integer(value, path)
    if n < 0:
        raise MappingError(path, f"quantity must not be negative, got {n}")
    return n


def money(value: Any, path: str, *, negative: bool = False) -> Decimal:
    """An exact amount, scale kept as sent; negative amounts refused unless allowed."""
    if isinstance(value, Decimal) and value.is_finite():
        amount = value
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    elif isinstance(value, str) and _AMOUNT.fullmatch(value.strip()):
        amount = Decimal(value.strip())
    else:
        # A float has already lost digits: the body must be parsed with parse_float=Decimal.
        raise MappingError(path, f"expected an amount, got {value!r}")
    if amount < 0 and not negative:
        raise MappingError(path, f"amount must not be negative, got {amount}")
    return amount


def optional_money(value: Any, path: str) -> Decimal | None:
    return None if value is None or value == "" else money(value, path)


def timestamp(value: Any, path: str, *, naive_zone: tzinfo | None = None) -> datetime:
    """An ISO 8601 / "YYYY-MM-DD HH:MM:SS" time as UTC. A time without an offset is read in
    `naive_zone` (the zone the platform documents); without one it is refused."""
    if not isinstance(value, str):
        raise MappingError(path, f"expected a timestamp, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MappingError(path, f"not an ISO 8601 timestamp: {value!r}") from None
    if parsed.utcoffset() is None:
        if naive_zone is None:
            raise MappingError(path, f"timestamp has no UTC offset: {value!r}")
        parsed = parsed.replace(tzinfo=naive_zone)
    return parsed.astimezone(UTC)


def currency(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise MappingError(path, f"expected an ISO 4217 code, got {value!r}")
    return value.upper()


def china_address(
    *,
    name: str | None,
    line1: str | None,
    city_parts: list[str | None],
    region: str | None,
    phone: str | None,
    postal_code: str | None = None,
) -> Address | None:
    """A mainland-China shipping address as the platforms split it (province, then city,
    district and town as separate fields): the city parts joined, country CN; None when
    the platform sent none of it."""
    address = Address(
        name=name,
        line1=line1,
        city=" ".join(p for p in city_parts if p) or None,
        region=region,
        postal_code=postal_code,
        phone=phone,
    )
    return None if address == Address() else dataclasses.replace(address, country_code="CN")

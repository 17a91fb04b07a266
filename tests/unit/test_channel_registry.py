"""The connector interface: built-ins, entry-point plugins, capabilities and status tables."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from ordersync import config as config_module
from ordersync.adapters.channels.base import (
    Capability,
    ChannelConnector,
    HttpRequest,
    HttpResponse,
    InboundMessage,
    PullPage,
    StatusRule,
    StatusTable,
    Window,
)
from ordersync.adapters.channels.registry import (
    BUILTIN,
    PluginError,
    connector_for,
    discover,
    status_table,
)
from ordersync.config import (
    ChannelConfig,
    ConfigError,
    PluginChannel,
    TaobaoChannel,
    WooCommerceChannel,
    settings_from_mapping,
)
from ordersync.domain.order_status import OrderStatus, PaymentStatus

GROUP = "ordersync.channels"


class AcmeConnector:
    """A third party's in-house marketplace, pushed only."""

    kind = "acme"
    capabilities = frozenset({Capability.PUSH, Capability.STOCK_PUSH})
    default_statuses = StatusTable({"NEW": StatusRule(OrderStatus.PENDING, PaymentStatus.PENDING)})

    def verify(self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> bool:
        return headers.get("x-acme-token") == "blue-teapot"

    def parse(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> InboundMessage:
        return InboundMessage("acme-1", "order", None, "{}")

    def pull_request(
        self, channel: ChannelConfig, window: Window, page: int, page_size: int
    ) -> HttpRequest:
        raise NotImplementedError

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        raise NotImplementedError


class NotAConnector:
    kind = "broken"


def entry(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{target}", group=GROUP)


def channels(*raw: dict[str, Any]) -> list[ChannelConfig]:
    return settings_from_mapping({"channels": list(raw)}, env={}).channels


def test_built_in_connectors_declare_what_they_can_do() -> None:
    """Shopify and WooCommerce push and are pulled, Taobao (TOP) is pulled."""
    capabilities = {kind: c.capabilities for kind, c in BUILTIN.items()}

    assert capabilities["shopify"] == {Capability.PUSH, Capability.PULL}
    assert capabilities["woocommerce"] == {Capability.PUSH, Capability.PULL}
    assert capabilities["taobao"] == {Capability.PULL}
    assert all(isinstance(c, ChannelConnector) for c in BUILTIN.values())


def test_a_third_party_connector_is_found_through_its_entry_point() -> None:
    """An entry point in "ordersync.channels" named after its kind adds that kind."""
    found = discover(found=lambda: [entry("acme", "AcmeConnector")])

    assert set(found) == {"acme"}
    assert found["acme"].capabilities == {Capability.PUSH, Capability.STOCK_PUSH}


def test_a_plugin_cannot_replace_a_built_in_connector() -> None:
    """A plugin named "shopify" is ignored: built-ins are registered directly and win."""
    found = discover(found=lambda: [entry("shopify", "AcmeConnector")])

    assert found == {}
    assert connector_for("shopify") is BUILTIN["shopify"]


def test_a_plugin_that_is_not_a_connector_fails_with_its_name() -> None:
    """Loading checks the interface, so a broken plugin fails at start-up, not mid-traffic."""
    with pytest.raises(PluginError, match=r"'broken'.*not a ChannelConnector"):
        discover(found=lambda: [entry("broken", "NotAConnector")])


def test_a_plugin_whose_kind_differs_from_its_entry_point_name_is_refused() -> None:
    """The entry point's name is the kind channels are configured with; they must agree."""
    with pytest.raises(PluginError, match="declares kind 'acme'"):
        discover(found=lambda: [entry("acme_v2", "AcmeConnector")])


def test_a_plugin_that_cannot_be_imported_fails_with_its_name() -> None:
    """An entry point pointing nowhere names the plugin in the error."""
    missing = EntryPoint(name="ghost", value="ordersync_ghost_plugin:Connector", group=GROUP)

    with pytest.raises(PluginError, match=r"'ghost'.*failed to load"):
        discover(found=lambda: [missing])


def test_an_unknown_kind_has_no_connector() -> None:
    """Asking for a kind nobody installed is an error, not a silent default."""
    with pytest.raises(PluginError, match="no connector for channel kind 'nosuchshop'"):
        connector_for("nosuchshop")


def test_a_channel_of_an_unknown_kind_fails_at_start_up_naming_the_kinds() -> None:
    """A typo in `kind` is reported with the key's path and the kinds that exist."""
    with pytest.raises(ConfigError) as e:
        channels({"id": "x-flagship", "kind": "nosuchshop", "secret": "s"})

    assert "channels[0]" in str(e.value)
    assert "unknown channel kind 'nosuchshop'" in str(e.value)
    assert "shopify, woocommerce, taobao" in str(e.value)


def test_a_channel_of_an_installed_plugin_kind_keeps_its_own_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plugin channels carry free-form `options` for their connector."""
    monkeypatch.setattr(config_module, "plugin_kinds", lambda: ["acme"])

    (channel,) = channels({"id": "acme-eu", "kind": "acme", "options": {"region": "eu"}})

    assert isinstance(channel, PluginChannel)
    assert channel.options == {"region": "eu"}


def test_each_kind_takes_its_own_credentials() -> None:
    """WooCommerce takes REST keys and a store URL; Taobao an app key, secret and session."""
    woo, top = channels(
        {
            "id": "woo-teahouse",
            "kind": "woocommerce",
            "secret": "wc-hook",
            "store_url": "https://teahouse.example",
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "pull": {"interval": 30, "overlap": 120, "page_size": 100},
        },
        {
            "id": "tmall-flagship",
            "kind": "taobao",
            "app_key": "12345678",
            "app_secret": "top-secret",
            "session": "6100e2",
            "sign_method": "hmac-sha256",
            "format": "xml",
        },
    )

    assert isinstance(woo, WooCommerceChannel)
    assert woo.pull is not None
    assert (woo.pull.interval, woo.pull.overlap, woo.pull.page_size) == (30, 120, 100)
    assert isinstance(top, TaobaoChannel)
    assert (top.sign_method, top.format, top.pull) == ("hmac-sha256", "xml", None)


def test_pulling_woocommerce_without_rest_keys_is_a_config_error() -> None:
    """A pull block needs credentials to pull with; said at start-up, with the path."""
    with pytest.raises(ConfigError, match=r"channels\[0\].*consumer_key and consumer_secret"):
        channels(
            {
                "id": "woo",
                "kind": "woocommerce",
                "secret": "s",
                "store_url": "https://teahouse.example",
                "pull": {},
            }
        )


def test_a_pull_window_no_longer_than_its_overlap_is_refused() -> None:
    """Such a pull would re-read the same window forever and never advance."""
    with pytest.raises(ConfigError, match="max_window must be longer than overlap"):
        channels(
            {
                "id": "tmall",
                "kind": "taobao",
                "app_key": "1",
                "app_secret": "s",
                "pull": {"overlap": 600, "max_window": 600},
            }
        )


def test_a_channel_overrides_single_rows_of_its_status_table() -> None:
    """Overrides replace the named platform statuses only; the defaults stay for the rest."""
    (woo,) = channels(
        {
            "id": "woo",
            "kind": "woocommerce",
            "secret": "s",
            "store_url": "https://teahouse.example",
            "statuses": {
                "on-hold": {"status": "cancelled", "payment": "voided"},
                "wc-gift-wrapping": {"status": "paid"},
            },
        }
    )

    table = status_table(woo)

    assert table.rule("on-hold", "status") == StatusRule(
        OrderStatus.CANCELLED, PaymentStatus.VOIDED
    )
    assert table.rule("wc-gift-wrapping", "status") == StatusRule(OrderStatus.PAID)
    assert table.rule("processing", "status") == StatusRule(OrderStatus.PAID)
    assert BUILTIN["woocommerce"].default_statuses.rule("on-hold", "status") == StatusRule(
        OrderStatus.PENDING
    )


def test_a_status_override_must_name_a_canonical_status() -> None:
    """`statuses` values are checked against the hub's states at start-up."""
    with pytest.raises(ConfigError, match=r"statuses\.on-hold\.status"):
        channels(
            {
                "id": "woo",
                "kind": "woocommerce",
                "secret": "s",
                "store_url": "https://teahouse.example",
                "statuses": {"on-hold": {"status": "lost-in-the-mail"}},
            }
        )

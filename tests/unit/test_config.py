"""Settings: one YAML file plus the environment, failing early with the path of a bad key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ordersync.config import ConfigError, Settings, load_settings, settings_from_mapping
from ordersync.domain.shipments import CallbackRetry

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SHOPIFY_SECRET = "shpss_9f3c1e7a2b4d6f80teahouse"


def teahouse(**overrides: Any) -> dict[str, Any]:
    """A hub for one Shopify tea house fanning out to a warehouse ERP."""
    raw: dict[str, Any] = {
        "database_url": "sqlite:///var/teahouse.db",
        "channels": [{"id": "shopify-teahouse", "kind": "shopify", "secret": "env:SHOPIFY_SECRET"}],
        "destinations": [
            {
                "id": "warehouse-erp",
                "url": "https://erp.example.test/hooks/orders",
                "secret": "env:ERP_WHSEC",
                "events": ["order.paid", "order.cancelled"],
                "retry_schedule": [1, 5, 30],
            }
        ],
        "api_keys": [{"id": "ops", "key": "env:OPS_KEY", "scopes": ["orders:read"]}],
    }
    raw.update(overrides)
    return raw


ENV = {"SHOPIFY_SECRET": SHOPIFY_SECRET, "ERP_WHSEC": WHSEC, "OPS_KEY": "ops-key-3f9a2c"}


def error_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        settings_from_mapping(raw, ENV if env is None else env)
    return str(e.value)


def test_env_references_are_resolved_into_secrets() -> None:
    """`env:ERP_WHSEC` becomes the value of that variable, kept as a SecretStr."""

    settings = settings_from_mapping(teahouse(), ENV)

    assert settings.destinations[0].secret.get_secret_value() == WHSEC
    assert settings.channels[0].secret.get_secret_value() == SHOPIFY_SECRET
    assert settings.api_keys[0].key.get_secret_value() == "ops-key-3f9a2c"
    assert settings.destinations[0].retry_schedule == [1.0, 5.0, 30.0]


def test_a_missing_environment_variable_names_the_key_that_needs_it() -> None:
    """Without ERP_WHSEC the error points at destinations[0].secret."""
    env = {k: v for k, v in ENV.items() if k != "ERP_WHSEC"}

    message = error_of(teahouse(), env)

    assert "destinations[0].secret" in message
    assert "ERP_WHSEC" in message


def test_ordersync_database_url_overrides_the_file() -> None:
    """ORDERSYNC_DATABASE_URL wins over the database_url in the YAML."""
    env = {**ENV, "ORDERSYNC_DATABASE_URL": "postgresql+asyncpg://hub@db.internal/ordersync"}

    settings = settings_from_mapping(teahouse(), env)

    assert settings.database_url == "postgresql+asyncpg://hub@db.internal/ordersync"


def test_a_bad_retry_delay_names_its_exact_path() -> None:
    """A word where a number belongs is reported as destinations[0].retry_schedule[1]."""
    raw = teahouse()
    raw["destinations"][0]["retry_schedule"] = [1, "soon", 30]

    message = error_of(raw)

    assert "destinations[0].retry_schedule[1]" in message


def test_a_negative_retry_delay_is_refused_with_its_path() -> None:
    """Delays must not be negative; the message names destinations[0].retry_schedule."""
    raw = teahouse()
    raw["destinations"][0]["retry_schedule"] = [1, -5]

    message = error_of(raw)

    assert "destinations[0].retry_schedule" in message
    assert ">= 0" in message


def test_an_unknown_key_is_refused_with_its_path() -> None:
    """A typo such as `retry_shedule` is an error, not silently ignored."""
    raw = teahouse()
    raw["destinations"][0]["retry_shedule"] = [1]

    message = error_of(raw)

    assert "destinations[0].retry_shedule" in message


def test_a_destination_secret_must_be_a_standard_webhooks_secret() -> None:
    """A plain password is refused: signing needs a whsec_ secret."""
    message = error_of(teahouse(), {**ENV, "ERP_WHSEC": "hunter2"})

    assert "destinations[0].secret" in message
    assert "whsec_" in message
    assert "hunter2" not in message


def test_duplicate_destination_ids_are_refused() -> None:
    """Two destinations called warehouse-erp cannot be told apart."""
    raw = teahouse()
    raw["destinations"] = raw["destinations"] * 2

    message = error_of(raw)

    assert "destinations" in message
    assert "duplicate id 'warehouse-erp'" in message


def test_secrets_never_appear_in_the_repr_of_the_settings() -> None:
    """Logging the settings shows stars, never the webhook, channel or API secrets."""
    settings = settings_from_mapping(teahouse(), ENV)

    text = repr(settings) + str(settings)

    assert WHSEC not in text
    assert SHOPIFY_SECRET not in text
    assert "ops-key-3f9a2c" not in text


def test_a_database_password_never_appears_in_the_repr_of_the_settings() -> None:
    """The password of postgresql://hub:s3cr3t-pw@db/ordersync is not shown."""
    env = {**ENV, "ORDERSYNC_DATABASE_URL": "postgresql://hub:s3cr3t-pw@db.internal/ordersync"}

    settings = settings_from_mapping(teahouse(), env)

    assert "s3cr3t-pw" not in repr(settings)


def test_defaults_need_no_file_at_all() -> None:
    """With no path and no ORDERSYNC_CONFIG, the defaults plus environment apply."""

    settings = load_settings(None, env={"ORDERSYNC_LOG_LEVEL": "DEBUG"})

    assert settings == Settings(log_level="DEBUG")


def test_a_yaml_file_is_loaded_from_ordersync_config(tmp_path: Path) -> None:
    """ORDERSYNC_CONFIG points at the file; env: references inside it are resolved."""
    path = tmp_path / "ordersync.yaml"
    path.write_text(
        "destinations:\n"
        "  - id: warehouse-erp\n"
        "    url: https://erp.example.test/hooks/orders\n"
        "    secret: env:ERP_WHSEC\n",
        encoding="utf-8",
    )

    settings = load_settings(env={**ENV, "ORDERSYNC_CONFIG": str(path)})

    assert settings.destinations[0].id == "warehouse-erp"
    assert settings.destinations[0].secret.get_secret_value() == WHSEC


def test_a_file_that_is_not_yaml_is_reported_with_its_path(tmp_path: Path) -> None:
    """Broken YAML fails at start-up naming the file."""
    path = tmp_path / "broken.yaml"
    path.write_text("destinations: [unclosed\n", encoding="utf-8")

    with pytest.raises(ConfigError) as e:
        load_settings(path, env={})

    assert str(path) in str(e.value)


def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    """A wrong path fails clearly instead of silently using defaults."""
    path = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError) as e:
        load_settings(path, env={})

    assert str(path) in str(e.value)


def test_the_callback_retry_defaults_are_the_policy_the_tracking_always_had() -> None:
    """No `tracking` block: 10 attempts, 5 s doubling, capped at 10 minutes."""

    policy = settings_from_mapping(teahouse(), ENV).tracking.callback_retry.policy()

    assert policy == CallbackRetry(
        max_attempts=10, base=timedelta(seconds=5), cap=timedelta(minutes=10)
    )


def test_tracking_callback_retry_sets_attempts_base_and_cap() -> None:
    """A yak-wool shop's flaky carrier: 4 attempts, 30 s doubling, capped at 90 s."""
    raw = teahouse(
        tracking={"callback_retry": {"max_attempts": 4, "base_seconds": 30, "cap_seconds": 90}}
    )
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    policy = settings_from_mapping(raw, ENV).tracking.callback_retry.policy()

    assert [policy.next_try(n, now) for n in (1, 2, 3, 4)] == [
        now + timedelta(seconds=30),
        now + timedelta(seconds=60),
        now + timedelta(seconds=90),
        None,
    ]


@pytest.mark.parametrize(
    ("retry", "key", "says"),
    [
        ({"max_attempts": 0}, "tracking.callback_retry.max_attempts", "greater than or equal to 1"),
        ({"base_seconds": 0}, "tracking.callback_retry.base_seconds", "greater than 0"),
        ({"base_seconds": -5}, "tracking.callback_retry.base_seconds", "greater than 0"),
        ({"cap_seconds": 0}, "tracking.callback_retry.cap_seconds", "greater than 0"),
        (
            {"cap_seconds": 86400 * 365},
            "tracking.callback_retry.cap_seconds",
            "less than or equal to 604800",
        ),
        ({"max_atempts": 3}, "tracking.callback_retry.max_atempts", "Extra inputs"),
        (
            {"base_seconds": 60, "cap_seconds": 30},
            "tracking.callback_retry",
            "cap_seconds (30) must not be below base_seconds (60)",
        ),
    ],
)
def test_a_bad_callback_retry_is_refused_with_its_path(
    retry: dict[str, Any], key: str, says: str
) -> None:
    """Zero or negative values, a cap below the base, or a typo fail at start-up."""

    message = error_of(teahouse(tracking={"callback_retry": retry}))

    assert f"{key}: " in message
    assert says in message

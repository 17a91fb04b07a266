"""Alert rules and the Grafana dashboard only query metrics the hub actually exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ordersync.adapters.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "ordersync-dashboard.json"

_METRIC_NAME = re.compile(r"\bordersync_[A-Za-z0-9_:]+")
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported_series() -> set[str]:
    """Every series name a scrape of the hub can return (families have no children yet)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(f"{family.name}{s}" for s in _SERIES_SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    return set(_METRIC_NAME.findall(expr))


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def dashboard_exprs() -> list[str]:
    return list(_exprs(dashboard()))


SERIES = exported_series()


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_metric_an_alert_queries_is_exported_by_the_hub(rule: dict[str, Any]) -> None:
    """An alert on a renamed or removed metric would silently never fire."""
    unknown = metric_names(rule["expr"]) - SERIES
    assert not unknown, f"{rule['alert']} queries metrics the hub does not export: {unknown}"


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_every_metric_the_dashboard_queries_is_exported_by_the_hub(expr: str) -> None:
    """A panel on a renamed or removed metric would silently go blank."""
    unknown = metric_names(expr) - SERIES
    assert not unknown, f"dashboard queries metrics the hub does not export: {unknown}"


def test_the_check_rejects_misspelled_and_wrongly_suffixed_metrics() -> None:
    """The name check is not vacuous: a typo or a suffix of the wrong metric type fails it."""
    assert "ordersync_delivery_attempts_total" in SERIES
    assert "ordersync_ingest_duration_seconds_bucket" in SERIES
    assert "ordersync_breaker_state" in SERIES
    for wrong in (
        "ordersync_delivery_attempt_total",  # typo
        "ordersync_breaker_state_total",  # gauges have no _total
        "ordersync_webhooks_received_bucket",  # counters have no buckets
    ):
        assert wrong not in SERIES
    assert metric_names('rate(ordersync_x_total{job="ordersync"}[5m])') == {"ordersync_x_total"}


def test_every_alert_and_dashboard_panel_queries_a_hub_metric() -> None:
    """Both assets actually reference the hub's metrics, so the checks above check something."""
    alert_metrics = set().union(*(metric_names(r["expr"]) for r in alert_rules()))
    dashboard_metrics = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert len(alert_metrics) >= 5
    assert len(dashboard_metrics) >= 8
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert any(metric_names(t["expr"]) for t in panel["targets"]), panel["title"]


def test_alert_rules_live_in_the_ordersync_group() -> None:
    """Prometheus loads one `ordersync` rule group."""
    doc = yaml.safe_load(ALERTS.read_text())
    assert [g["name"] for g in doc["groups"]] == ["ordersync"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_a_severity_a_summary_and_a_runbook_description(
    rule: dict[str, Any],
) -> None:
    """On-call gets a routable severity, a one-line summary and what to do next."""
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"].strip()
    assert "Runbook:" in rule["annotations"]["description"]


def test_dashboard_is_schema_39_and_queries_through_the_ds_prometheus_variable() -> None:
    """Importing the dashboard asks for a Prometheus data source and every query uses it."""
    dash = dashboard()
    assert dash["schemaVersion"] == 39
    ds_vars = [v for v in dash["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert len(ds_vars) == 1
    assert ds_vars[0]["type"] == "datasource"
    assert ds_vars[0]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"

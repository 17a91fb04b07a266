"""Prometheus metrics, prefixed `ordersync_`, units in the name."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ordersync.domain.delivery import DeliveryState
from ordersync.service.carrier_booking import CarrierCallObserver
from ordersync.service.delivery_ports import AttemptOutcome
from ordersync.service.dispatcher import DeliveryObserver
from ordersync.service.relay import RelayObserver
from ordersync.service.shipments import AlertObserver
from ordersync.service.stock_publisher import StockPushObserver

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics(DeliveryObserver):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "ordersync_webhooks_received",
            "Inbound channel messages by outcome (created, updated, duplicate, stale, ...).",
            ["channel", "outcome"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "ordersync_ingest_duration_seconds",
            "Time from receiving a channel message to answering it (durably recorded).",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "ordersync_commit_batch_size",
            "Commands committed per group-commit transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "ordersync_commit_duration_seconds",
            "Duration of one group-commit transaction.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "ordersync_delivery_attempts",
            "Delivery attempts by destination and outcome (succeeded, retrying, dead).",
            ["destination", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "ordersync_delivery_duration_seconds",
            "HTTP duration of one delivery attempt.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            "ordersync_breaker_state",
            "Circuit breaker per destination: 0 closed, 1 half-open, 2 open.",
            ["destination"],
            registry=r,
            multiprocess_mode="max",  # several workers: the worst breaker shows
        )
        self.deliveries = Gauge(
            "ordersync_deliveries",
            "Delivery records by destination and state (pending is the queue depth).",
            ["destination", "state"],
            registry=r,
            multiprocess_mode="mostrecent",  # every process reads the same table
        )

        self.queue_depth = Gauge(
            "ordersync_queue_depth",
            "Messages ready in each broker queue (lanes and dead letters).",
            ["queue"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.relay_lag = Histogram(
            "ordersync_relay_lag_seconds",
            "Time from an event's commit to the broker confirming its publication.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.relay_published = Counter(
            "ordersync_relay_published_events",
            "Events the outbox relay published (confirmed by the broker).",
            registry=r,
        )
        self.relay_leader = Gauge(
            "ordersync_relay_leader",
            "1 while a process holds the outbox relay lease (summed over live processes).",
            registry=r,
            multiprocess_mode="livesum",
        )

        self.alerts_raised = Counter(
            "ordersync_alerts_raised",
            "Shipment alerts raised, by rule (each (shipment, rule) at most once).",
            ["rule"],
            registry=r,
        )
        self.alerts_open = Gauge(
            "ordersync_alerts_open",
            "Unresolved shipment alerts by rule (open or acknowledged).",
            ["rule"],
            registry=r,
            multiprocess_mode="mostrecent",  # every process reads the same table
        )
        self.callbacks_parked = Gauge(
            "ordersync_carrier_callbacks_parked",
            "Carrier callbacks parked after failing to apply `tracking.callback_retry"
            ".max_attempts` times, waiting for an operator (list and replay by API).",
            registry=r,
            multiprocess_mode="mostrecent",  # every process reads the same table
        )
        self.carrier_calls = Counter(
            "ordersync_carrier_calls",
            "Calls to carriers by operation (book, cancel, poll) and outcome (ok, error);"
            " a failed book is followed by the rule's next fallback carrier.",
            ["carrier", "operation", "outcome"],
            registry=r,
        )
        self.stock_pushes = Counter(
            "ordersync_stock_pushes",
            "Channel stock push attempts by outcome (pushed, failed: retried, rejected:"
            " refused by the platform, not retried at once).",
            ["channel", "outcome"],
            registry=r,
        )

    def carrier_call_observer(self) -> CarrierCallObserver:
        metrics = self

        class _Observer:
            def called(self, carrier_id: str, operation: str, outcome: str) -> None:
                metrics.carrier_calls.labels(carrier_id, operation, outcome).inc()

        return _Observer()

    def stock_push_observer(self) -> StockPushObserver:
        metrics = self

        class _Observer:
            def push_attempted(self, channel_id: str, outcome: str) -> None:
                metrics.stock_pushes.labels(channel_id, outcome).inc()

        return _Observer()

    def alert_observer(self) -> AlertObserver:
        metrics = self

        class _Observer:
            def raised(self, rule: str) -> None:
                metrics.alerts_raised.labels(rule).inc()

            def open_counts(self, counts: Mapping[str, int]) -> None:
                for rule, n in counts.items():
                    metrics.alerts_open.labels(rule).set(n)

            def parked_callbacks(self, count: int) -> None:
                """The number of parked carrier callbacks, read with the open alerts."""
                metrics.callbacks_parked.set(count)

        return _Observer()

    def relay_observer(self) -> RelayObserver:
        metrics = self

        class _Observer(RelayObserver):
            def published(self, lags_seconds: list[float]) -> None:
                metrics.relay_published.inc(len(lags_seconds))
                for lag in lags_seconds:
                    metrics.relay_lag.observe(lag)

            def leader(self, is_leader: bool) -> None:
                metrics.relay_leader.set(1 if is_leader else 0)

        return _Observer()

    # DeliveryObserver
    def attempt(self, destination_id: str, outcome: AttemptOutcome, state: DeliveryState) -> None:
        label = {
            DeliveryState.SUCCEEDED: "succeeded",
            DeliveryState.PENDING: "retrying",
            DeliveryState.DEAD: "dead",
        }[state]
        self.attempts.labels(destination_id, label).inc()
        self.delivery_seconds.labels(destination_id).observe(outcome.duration_ms / 1000)

    def breaker(self, destination_id: str, state: str) -> None:
        self.breaker_state.labels(destination_id).set(_BREAKER_VALUES[state])

    # BatchObserver (message bus)
    def batch_committed(self, size: int, seconds: float, destinations: set[str]) -> None:
        self.commit_batch.observe(size)
        self.commit_seconds.observe(seconds)

"""Prometheus metrics of the daemons, served on ``--metrics-port`` (prometheus-client).

The metric objects live here so the daemons only call ``inc``/``observe``; nothing is exported
unless a daemon starts the HTTP server.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

CREATED = Counter("timerctl_timers_created", "Timers created through this process's HTTP API.")
CHANGED = Counter("timerctl_timers_changed", "Changes made through this process's HTTP API, by op.", ["op"])
PERSISTED = Counter("timerctl_timers_persisted", "Timers newly written to the store by the consumer.")
FIRED = Counter("timerctl_timers_fired", "Delivery attempts made, by result.", ["result"])
FINISHED = Counter("timerctl_timers_finished", "Timers delivered (2xx).")
FAILED = Counter("timerctl_timers_failed", "Timers that gave up after the last attempt or a refused target.")
RETRIED = Counter("timerctl_timers_retried", "Failed attempts scheduled for a retry.")
REFUSED_STARTS = Counter(
    "timerctl_starts_refused", "Held timers not started because they were cancelled, changed or taken over."
)
PURGED = Counter("timerctl_timers_purged", "Ended timers deleted by retention.")
DLQ = Counter("timerctl_dlq_records", "Malformed Kafka records sent to the dead-letter topic.")
LATENESS = Histogram(
    "timerctl_firing_lateness_seconds",
    "When an attempt started relative to its due time.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DELIVERY = Histogram(
    "timerctl_delivery_duration_seconds",
    "Duration of one webhook POST.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("timerctl_deliveries_in_flight", "POSTs under way in this runner.")
HELD = Gauge("timerctl_timers_held", "Timers claimed by this runner and not yet recorded.")
CONSUMER_LAG = Gauge("timerctl_consumer_lag", "Records behind the partitions' high watermarks.")


def serve_metrics(port: int | None, host: str = "0.0.0.0") -> None:
    """Expose /metrics on ``port`` (no-op for None) in a background thread."""
    if port is not None:
        start_http_server(port, addr=host)

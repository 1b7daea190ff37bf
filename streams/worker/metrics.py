"""Prometheus metrics of one worker; served as text on `GET /metrics`.

Accounting (CONTRACT.md section 4, rule 11): every input record is counted once in
`streams_records_in_total{topic}` and once in `streams_outcomes_total{topic,outcome}`,
where outcome is one of stored, expired, joined, pending, unmatched, deadletter,
duplicate or rerouted (sent on to the partition its key hashes to, and counted again
there). Feedback that waited (`pending`) later leaves through
`streams_pending_resolved_total{outcome}` (joined or unmatched).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OUTCOMES = (
    "stored",
    "expired",
    "joined",
    "pending",
    "unmatched",
    "deadletter",
    "duplicate",
    "rerouted",
)


class Metrics:
    """The counters, gauges and histogram of CONTRACT.md section 7, on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_in = Counter("streams_records_in", "Input records read", ["topic"], registry=r)
        self.outcomes = Counter(
            "streams_outcomes", "Where each input record ended", ["topic", "outcome"], registry=r
        )
        self.joined = Counter("streams_joined", "Joined records emitted", ["trigger"], registry=r)
        self.unmatched = Counter(
            "streams_unmatched", "Unmatched records emitted", ["reason"], registry=r
        )
        self.deadletter = Counter(
            "streams_deadletter", "Dead-lettered input records", ["topic", "reason"], registry=r
        )
        self.pending_resolved = Counter(
            "streams_pending_resolved",
            "Pending feedback that left the queue",
            ["outcome"],
            registry=r,
        )
        self.expired = Counter("streams_expired", "Predictions expired by the sweep", registry=r)
        self.replays = Counter(
            "streams_replays", "Inputs seen again at the same offset after a restart", registry=r
        )
        self.pending = Gauge("streams_pending", "Feedback waiting for its prediction", registry=r)
        self.stored_predictions = Gauge(
            "streams_stored_rows",
            "Rows in the state table (RocksDB estimate, active partitions)",
            registry=r,
        )
        self.join_latency = Histogram(
            "streams_join_latency_seconds",
            "From the feedback's Kafka timestamp to its joined record being sent",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.sweep_seconds = Histogram(
            "streams_sweep_seconds",
            "Duration of one expiry sweep",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streams_consumer_lag",
            "Input records not yet read, per input partition this worker owns (librdkafka's view)",
            ["topic", "partition"],
            registry=r,
        )
        self.batch_size = Histogram(
            "streams_batch_size",
            "Input records per batch handed to the agent",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.restore_remaining = Gauge(
            "streams_restore_remaining_records",
            "Changelog records left to read before a partition's tables are restored",
            ["partition"],
            registry=r,
        )
        self.restored = Counter(
            "streams_restored_records",
            "Changelog records read to restore tables (a restart reads only the tail)",
            registry=r,
        )
        self.restoring = Gauge(
            "streams_restoring_partitions", "Partitions being restored now", registry=r
        )
        for topic in ("predictions", "feedback"):
            self.records_in.labels(topic)
            for outcome in OUTCOMES:
                self.outcomes.labels(topic, outcome)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

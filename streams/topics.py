"""Topic names and creation: every topic of the contract, with its partitions and retention."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # the admin module does not re-export it for mypy

from streams.errors import StreamsError
from streams.kafka_config import error_callback, librdkafka_config, list_topics
from streams.settings import Settings

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
JOINED = "joined"
UNMATCHED = "unmatched"
DEADLETTER = "deadletter"
FEEDBACK_STATS = "feedback-stats"
VERSIONS = "versions"
INPUTS = (PREDICTIONS, FEEDBACK)
OUTPUTS = (JOINED, UNMATCHED, DEADLETTER)


class PartitionMismatch(StreamsError):
    """`predictions` and `feedback` have different partition counts: the join cannot work."""

    reason = "partition_mismatch"


@dataclass(frozen=True)
class TopicSpec:
    """One topic to create: name after the prefix, partitions and topic configs."""

    name: str
    partitions: int
    config: dict[str, str]


def _ms(value: timedelta) -> str:
    return str(round(value.total_seconds() * 1000))


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the contract, as `streams topics create` and the worker make them."""
    # Inputs outlive the longest retention by a day so a worker rebuilt from scratch
    # can still re-read any prediction that may yet be joined.
    inputs = {
        "cleanup.policy": "delete",
        "retention.ms": _ms(settings.longest_retention + timedelta(days=1)),
        # Retention deletes whole segments: day-long ones leave a record at most a day
        # past retention.ms, instead of up to the default week.
        "segment.ms": _ms(timedelta(days=1)),
    }
    outputs = {"cleanup.policy": "delete"}
    specs = [TopicSpec(settings.topic(name), settings.partitions, inputs) for name in INPUTS]
    specs += [TopicSpec(settings.topic(name), settings.partitions, outputs) for name in OUTPUTS]
    # Aggregates: only the latest value per key matters (CONTRACT.md section 8).
    stats = {"cleanup.policy": "compact"}
    specs.append(TopicSpec(settings.topic(FEEDBACK_STATS), settings.partitions, stats))
    # Prompt versions and releases (streams.sdk.versions): one partition, so the log's
    # order numbers the versions; compaction keeps every version (a key each) and the
    # latest release per environment.
    specs.append(TopicSpec(settings.topic(VERSIONS), 1, {"cleanup.policy": "compact"}))
    return specs


def admin(settings: Settings) -> AdminClient:
    """An admin client for the configured cluster; a refused login raises `AuthenticationFailed`."""
    config: dict[str, Any] = {
        **librdkafka_config(settings),
        "socket.timeout.ms": 10_000,
        "error_cb": error_callback(settings, log),
        "logger": log,
    }
    return AdminClient(config)


def partition_counts(
    client: AdminClient, names: list[str], timeout: float = 10.0
) -> dict[str, int]:
    """Partition count of each existing topic among `names` (missing ones are left out)."""
    metadata = list_topics(client, timeout)
    return {
        name: len(metadata.topics[name].partitions)
        for name in names
        if name in metadata.topics and metadata.topics[name].error is None
    }


def create_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are kept as they are."""
    client = admin(settings)
    specs = topic_specs(settings) if specs is None else specs
    existing = partition_counts(client, [spec.name for spec in specs], timeout)
    missing = [spec for spec in specs if spec.name not in existing]
    created: list[str] = []
    if missing:
        futures = client.create_topics(
            [
                NewTopic(
                    s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config
                )
                for s in missing
            ],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                created.append(name)
                log.info("topic_created topic=%s", name)
            except KafkaException as error:
                if error.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: another worker won the race
                    raise
        _wait_until_listed(client, [spec.name for spec in missing], timeout)
    return created


def _wait_until_listed(client: AdminClient, names: list[str], timeout: float) -> None:
    # The controller answers CreateTopics before the brokers' metadata has the topic, so
    # a check right after (check_copartitioned at worker start) could find it "missing".
    deadline = time.monotonic() + timeout
    while True:
        unlisted = set(names) - set(partition_counts(client, names, timeout))
        if not unlisted:
            return
        if time.monotonic() >= deadline:
            raise StreamsError(
                f"topic(s) created but not listed after {timeout} s: {sorted(unlisted)}"
            )
        time.sleep(0.05)


def check_copartitioned(settings: Settings, timeout: float = 10.0) -> int:
    """Return the shared partition count of `predictions` and `feedback`, or raise naming both."""
    names = [settings.topic(PREDICTIONS), settings.topic(FEEDBACK)]
    counts = partition_counts(admin(settings), names, timeout)
    missing = [name for name in names if name not in counts]
    if missing:
        raise StreamsError(f"topic(s) missing: {', '.join(missing)}")
    predictions, feedback = counts[names[0]], counts[names[1]]
    if predictions != feedback:
        raise PartitionMismatch(
            f"{names[0]} has {predictions} partitions and {names[1]} has {feedback}: "
            "they must be equal for predictions and feedback to meet on one worker"
        )
    return predictions


def delete_topics(settings: Settings, prefixes: tuple[str, ...]) -> list[str]:
    """Delete every topic whose name starts with one of `prefixes`; return their names.

    For throwaway runs (the demo, tests): their inputs, outputs and the changelogs
    named after their app id. Best effort: a topic already gone is not an error.
    """
    client = admin(settings)
    names = [n for n in list_topics(client, 10).topics if n.startswith(prefixes)]
    for future in (client.delete_topics(names, operation_timeout=30) if names else {}).values():
        try:
            future.result(timeout=30)
        except KafkaException as error:
            log.warning("topic_delete_failed error=%s", error)
    return names

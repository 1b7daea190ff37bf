"""Topic names and creation: every topic of the contract, with its partitions and retention."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # the admin module does not re-export it for mypy

from streams.errors import BrokerUnreachable, StreamsError
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
# The worker's tables; each has a compacted changelog topic (`changelog_topic`).
TABLES = ("state", "due")
# How long a command waits for a broker to answer before it gives up, in seconds.
CONNECT_TIMEOUT = 10.0
# Changelogs are compacted: the latest row per key survives, deleted rows leave as
# tombstones (removed a day later). Hour-long segments let compaction reach rows within
# the hour; `max.compaction.lag.ms` makes it come within a day even when little changed.
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(3_600_000),
    "delete.retention.ms": str(86_400_000),
    "max.compaction.lag.ms": str(86_400_000),
    "min.cleanable.dirty.ratio": "0.2",
}


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


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog topic of one of the worker's tables: `<app_id>-<table>-changelog`.

    Named after STREAMS_APP_ID, not STREAMS_TOPIC_PREFIX, as faust (and Kafka Streams)
    name internal topics: the app id is the prefix an ACL on internal topics uses.
    """
    return f"{settings.app_id}-{table}-changelog"


def leader_topic(settings: Settings) -> str:
    """The assignor topic of faust (one partition), which the worker's faust app reads."""
    return f"{settings.app_id}-__assignor-__leader"


def internal_topic_specs(settings: Settings, partitions: int) -> list[TopicSpec]:
    """The worker's own topics: a changelog per table (`partitions`, as the inputs) and faust's."""
    specs = [
        TopicSpec(changelog_topic(settings, table), partitions, CHANGELOG_CONFIG)
        for table in TABLES
    ]
    specs.append(TopicSpec(leader_topic(settings), 1, {}))
    return specs


def check_broker(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise `BrokerUnreachable` (one line, naming the variable) unless a broker answers.

    A TCP connect to each bootstrap server first, so a port where nothing listens fails
    at once; then a metadata request, bounded by `timeout` seconds.
    """
    servers = settings.bootstrap_servers
    problem = f"no Kafka broker answers at STREAMS_BOOTSTRAP_SERVERS={servers}"
    hint = "start one (make kafka-up) or point STREAMS_BOOTSTRAP_SERVERS at yours"
    reasons = [_connect_error(server.strip(), timeout) for server in servers.split(",")]
    if all(reasons):
        raise BrokerUnreachable(f"{problem} ({reasons[0]}): {hint}")
    try:
        # A probe reports its own failure in one line: no "brokers are down" warning before it.
        list_topics(admin(settings, quiet=True), timeout)
    except KafkaException as error:
        raise BrokerUnreachable(
            f"{problem} within {timeout:g} s ({_text(error)}): {hint}"
        ) from None


def _connect_error(server: str, timeout: float) -> str | None:
    host, _, port = server.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


def _text(error: KafkaException) -> str:
    first = error.args[0] if error.args else None
    return first.str() if isinstance(first, KafkaError) else str(error)


def admin(settings: Settings, *, quiet: bool = False) -> AdminClient:
    """An admin client for the configured cluster; a refused login raises `AuthenticationFailed`.

    `quiet`: other errors are not logged (the caller reports them).
    """
    config: dict[str, Any] = {
        **librdkafka_config(settings),
        "socket.timeout.ms": 10_000,
        "error_cb": error_callback(settings, None if quiet else log),
        "logger": log,
        # librdkafka's own log repeats every connection failure; the error callback and
        # the exceptions say it once.
        "log_level": 0,
    }
    return AdminClient(config)


def partition_counts(
    client: AdminClient, names: list[str], timeout: float = 10.0
) -> dict[str, int]:
    """Partition count of each existing topic among `names` (missing ones are left out)."""
    try:
        metadata = list_topics(client, timeout)
    except KafkaException as error:
        raise BrokerUnreachable(f"the broker did not list its topics: {_text(error)}") from None
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
                    raise StreamsError(f"cannot create topic {name}: {_text(error)}") from None
        _wait_until_listed(client, [spec.name for spec in missing], timeout)
    return created


def create_every_topic(settings: Settings) -> tuple[dict[str, int], list[str]]:
    """`streams topics create`: the contract's topics, then the worker's own ones.

    Returns the partition count of every topic as the broker has it, in creation order,
    and the names this call created. Internal topics get the inputs' partition count.
    """
    check_broker(settings)
    specs = topic_specs(settings)
    created = create_topics(settings, specs)
    client = admin(settings)
    names = [spec.name for spec in specs]
    counts = partition_counts(client, names)
    partitions = counts.get(settings.topic(PREDICTIONS), settings.partitions)
    internal = internal_topic_specs(settings, partitions)
    created += create_topics(settings, internal)
    names += [spec.name for spec in internal]
    counts = partition_counts(client, names)
    return {name: counts[name] for name in names if name in counts}, created


def copartition_problem(settings: Settings, counts: dict[str, int]) -> str | None:
    """Why the worker would refuse these topics, or None: `predictions` and `feedback` differ."""
    names = [settings.topic(PREDICTIONS), settings.topic(FEEDBACK)]
    predictions, feedback = (counts.get(name) for name in names)
    if predictions is None or feedback is None or predictions == feedback:
        return None
    return (
        f"{names[0]} has {predictions} partitions and {names[1]} has {feedback}: "
        "they must be equal for predictions and feedback to meet on one worker"
    )


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
    problem = copartition_problem(settings, counts)
    if problem is not None:
        raise PartitionMismatch(problem)
    return counts[names[0]]


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

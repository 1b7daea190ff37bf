"""Topic creation on a real broker: names, partitions, configs, idempotence, co-partitioning."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from streams.errors import StreamsError
from streams.settings import Settings
from streams.topics import PartitionMismatch, check_copartitioned, create_topics, partition_counts

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
# CONTRACT.md section 2: every topic and its cleanup policy.
CONTRACT_TOPICS = {
    "predictions": "delete",
    "feedback": "delete",
    "joined": "delete",
    "unmatched": "delete",
    "deadletter": "delete",
    "feedback-stats": "compact",
    "versions": "compact",
}
INPUTS = ("predictions", "feedback")


def expected_partitions(names: list[str], count: int) -> dict[str, int]:
    """STREAMS_PARTITIONS for every topic but `versions`, which has one (its log numbers them)."""
    return {name: 1 if name.endswith(".versions") else count for name in names}


@pytest.fixture
def admin_client(bootstrap: str, topic_prefix: str) -> Iterator[AdminClient]:
    """An admin client; the test's topics are deleted afterwards."""
    client = AdminClient({"bootstrap.servers": bootstrap})
    yield client
    # The listing may lag a creation, so the contract's names are deleted even if unlisted.
    listed = {
        name for name in client.list_topics(timeout=10).topics if name.startswith(topic_prefix)
    }
    mine = sorted(listed | {topic_prefix + topic for topic in CONTRACT_TOPICS})
    for future in client.delete_topics(mine, operation_timeout=30).values():
        try:
            future.result(timeout=30)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def topic_configs(client: AdminClient, name: str) -> dict[str, str]:
    """The topic's configs as the broker reports them (retried while metadata settles)."""
    deadline = time.monotonic() + 15
    while True:
        future = client.describe_configs([ConfigResource(ResourceType.TOPIC, name)])
        try:
            entries = next(iter(future.values())).result(timeout=15)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        return {key: entry.value for key, entry in entries.items()}


def make_topic(client: AdminClient, name: str, partitions: int) -> None:
    """Create a topic by hand and wait until the broker lists it."""
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], operation_timeout=30
    )
    futures[name].result(timeout=30)
    deadline = time.monotonic() + 15
    while partition_counts(client, [name]).get(name) != partitions:
        assert time.monotonic() < deadline, f"{name} is not listed 15 s after its creation"
        time.sleep(0.05)


def test_create_topics_makes_every_topic_of_the_contract(
    settings: Settings, admin_client: AdminClient, topic_prefix: str
) -> None:
    created = create_topics(settings)

    names = {topic_prefix + topic for topic in CONTRACT_TOPICS}
    assert sorted(created) == sorted(names)
    assert partition_counts(admin_client, sorted(names)) == expected_partitions(sorted(names), 4)
    for topic, policy in CONTRACT_TOPICS.items():
        configs = topic_configs(admin_client, topic_prefix + topic)
        assert configs["cleanup.policy"] == policy, topic
    for topic in INPUTS:
        configs = topic_configs(admin_client, topic_prefix + topic)
        # Default retention 90 days, plus a day; day-long segments.
        assert int(configs["retention.ms"]) == 91 * DAY_MS, topic
        assert int(configs["segment.ms"]) == DAY_MS, topic


@pytest.mark.parametrize(
    ("retention", "by_application", "input_retention_days"),
    [
        ("2d", "", 3),
        ("2d", "chat=5d,loans=1d", 6),
        ("12h", "chat=7d", 8),
        ("30d", "audit=90d", 91),
    ],
)
def test_inputs_outlive_the_longest_retention_by_a_day(
    env: dict[str, str],
    admin_client: AdminClient,
    topic_prefix: str,
    retention: str,
    by_application: str,
    input_retention_days: int,
) -> None:
    settings = Settings.from_env(
        {
            **env,
            "STREAMS_RETENTION": retention,
            "STREAMS_RETENTION_BY_APPLICATION": by_application,
            "STREAMS_PARTITIONS": "2",
        }
    )

    create_topics(settings)

    for topic in INPUTS:
        configs = topic_configs(admin_client, topic_prefix + topic)
        assert int(configs["retention.ms"]) == input_retention_days * DAY_MS, topic
        assert configs["cleanup.policy"] == "delete"
    counts = partition_counts(admin_client, [topic_prefix + topic for topic in CONTRACT_TOPICS])
    assert counts == expected_partitions(list(counts), 2)
    assert len(counts) == len(CONTRACT_TOPICS)


def test_create_topics_is_idempotent(
    env: dict[str, str], settings: Settings, admin_client: AdminClient
) -> None:
    first = create_topics(settings)
    before = {name: topic_configs(admin_client, name) for name in first}

    second = create_topics(settings)
    # Other settings must not change topics that exist: they are kept as they are.
    third = create_topics(Settings.from_env({**env, "STREAMS_PARTITIONS": "6"}))

    assert len(first) == len(CONTRACT_TOPICS)
    assert second == third == []
    assert partition_counts(admin_client, first) == expected_partitions(first, 4)
    assert {name: topic_configs(admin_client, name) for name in first} == before
    assert check_copartitioned(settings) == 4


def test_create_topics_makes_only_the_missing_ones(
    settings: Settings, admin_client: AdminClient, topic_prefix: str
) -> None:
    make_topic(admin_client, topic_prefix + "predictions", 4)

    created = create_topics(settings)

    assert sorted(created) == sorted(
        topic_prefix + topic for topic in CONTRACT_TOPICS if topic != "predictions"
    )
    # The one made by hand keeps the broker's default configs.
    configs = topic_configs(admin_client, topic_prefix + "predictions")
    assert int(configs["retention.ms"]) != 91 * DAY_MS


def test_check_copartitioned_returns_the_shared_count(
    settings: Settings, admin_client: AdminClient
) -> None:
    create_topics(settings)

    assert check_copartitioned(settings) == 4


@pytest.mark.parametrize(("predictions", "feedback"), [(3, 5), (8, 1)])
def test_check_copartitioned_names_both_counts(
    settings: Settings,
    admin_client: AdminClient,
    topic_prefix: str,
    predictions: int,
    feedback: int,
) -> None:
    make_topic(admin_client, topic_prefix + "predictions", predictions)
    make_topic(admin_client, topic_prefix + "feedback", feedback)

    with pytest.raises(PartitionMismatch) as raised:
        check_copartitioned(settings)

    message = str(raised.value)
    assert f"{topic_prefix}predictions has {predictions} partitions" in message
    assert f"{topic_prefix}feedback has {feedback}" in message
    assert raised.value.reason == "partition_mismatch"


def test_check_copartitioned_names_a_missing_topic(
    settings: Settings, admin_client: AdminClient, topic_prefix: str
) -> None:
    make_topic(admin_client, topic_prefix + "predictions", 4)

    with pytest.raises(StreamsError, match=f"{topic_prefix}feedback") as raised:
        check_copartitioned(settings)

    assert not isinstance(raised.value, PartitionMismatch)
    assert f"{topic_prefix}predictions" not in str(raised.value)

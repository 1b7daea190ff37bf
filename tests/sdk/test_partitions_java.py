"""Partitions as the Kafka Java client computes them, against the SDK's and the worker's choice.

The reference is the Java client itself (`org.apache.kafka.common.utils.Utils.murmur2`
in kafka-clients, from the jars the local broker runs on), run as a single-file Java
program (tests/data/KafkaPartitions.java), not a formula copied into Python.
"""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.sdk.producer import producer_config
from streams.settings import Settings
from streams.worker.processing import partition_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COUNTS = [1, 2, 4, 7, 8, 12, 100]


@pytest.fixture(scope="module")
def kafka_jars(bootstrap: str) -> Path:
    """The broker's jars: $KAFKA_STATE_DIR/jars or .kafka/jars (fetched if missing); never skips.

    `bootstrap` starts the local broker when none answers, which fetches them; when another
    broker answers, `scripts/kafka.sh jars` fetches them (Maven), and a failure fails the test.
    """
    state = Path(os.environ.get("KAFKA_STATE_DIR", ROOT / ".kafka"))
    jars = state / "jars"
    if not list(jars.glob("kafka-clients-*.jar")):
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "jars"], check=True, cwd=ROOT)
    assert list(jars.glob("kafka-clients-*.jar")), f"no kafka-clients jar in {jars}"
    return jars


def java_partitions(jars: Path, keys: list[bytes], counts: list[int]) -> list[list[int]]:
    """Each key's partition for each count, computed by the Kafka Java client."""
    result = subprocess.run(
        [
            "java",
            "-cp",
            f"{jars}/*",
            str(ROOT / "tests" / "data" / "KafkaPartitions.java"),
            *map(str, counts),
        ],
        input="".join(key.hex() + "\n" for key in keys),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(keys), result.stderr
    return [[int(p) for p in line.split()] for line in lines]


def sample_keys(n: int) -> list[bytes]:
    """Join keys as users make them (UUIDs, ids, MD5s, text) and awkward ones."""
    rng = random.Random(11)
    keys = [b"", b"a", b"k1", "clé-é-ü-中".encode(), bytes(range(256)), b"x" * 1000]
    for i in range(n):
        kind = i % 4
        if kind == 0:
            keys.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode())
        elif kind == 1:
            keys.append(f"order-{rng.randrange(10**9)}".encode())
        elif kind == 2:
            keys.append(rng.randbytes(16).hex().encode())
        else:
            keys.append(rng.randbytes(rng.randrange(1, 40)))
    return keys


def test_the_worker_places_keys_where_the_java_client_does(kafka_jars: Path) -> None:
    keys = sample_keys(1000)
    java = java_partitions(kafka_jars, keys, COUNTS)
    ours = [[partition_for(key, count) for count in COUNTS] for key in keys]
    wrong = [(key, j, o) for key, j, o in zip(keys, java, ours, strict=True) if j != o]
    assert wrong == [], f"{len(wrong)} keys placed otherwise than Java, e.g. {wrong[:3]}"


def test_the_sdk_producer_places_keys_where_the_java_client_does(
    kafka_jars: Path, bootstrap: str, topic_prefix: str
) -> None:
    """Records produced with the SDK's producer configuration land where Java puts them."""
    topic = topic_prefix + "placement"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 7, 1)])[topic].result(30)
    keys = [key for key in sample_keys(200) if key]  # librdkafka: an empty key is no key
    producer = Producer(producer_config(Settings(bootstrap_servers=bootstrap)))
    for key in keys:
        producer.produce(topic, key=key, value=b"{}")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"placement-{uuid.uuid4()}"})
    placed: dict[bytes, int] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(7)])
        while len(placed) < len(set(keys)):
            message = consumer.poll(10)
            assert message is not None, f"read {len(placed)} of {len(set(keys))} keys"
            assert message.error() is None, message.error()
            placed[message.key()] = message.partition()
    finally:
        consumer.close()
    java = dict(zip(keys, (p[0] for p in java_partitions(kafka_jars, keys, [7])), strict=True))
    assert placed == java

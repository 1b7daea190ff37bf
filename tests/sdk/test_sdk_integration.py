"""The producer SDK and consume_joined against a real broker."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from jsonschema import Draft202012Validator

import streams
from streams.errors import DeliveryError
from streams.records import load_schema
from streams.sdk import session as sdk
from streams.sdk.client import Application
from streams.sdk.consumer import read_topic
from streams.sdk.joinkey import JoinKey
from streams.sdk.producer import Client
from streams.settings import Settings
from streams.topics import FEEDBACK, JOINED, PREDICTIONS, UNMATCHED, create_topics

pytestmark = pytest.mark.integration

PARTITIONS = [0, 1, 2, 3]  # the `env` fixture asks for 4


def read_all(settings: Settings, name: str, expected: int, timeout: float = 30.0) -> list[Message]:
    """Every record on a topic (all partitions, from the start), waiting for `expected` of them."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    topic = settings.topic(name)
    consumer.assign([TopicPartition(topic, p, 0) for p in PARTITIONS])
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                assert message.error() is None, message.error()
                got.append(message)
        # Anything beyond what we expect would be a duplicate: give it a moment to show.
        got.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return got


def check_schema(name: str, record: dict[str, Any]) -> None:
    validator = Draft202012Validator(
        load_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(record)


@pytest.fixture
def topics(settings: Settings) -> Settings:
    create_topics(settings)
    return settings


@pytest.fixture(autouse=True)
def no_global_client() -> Any:
    yield
    sdk._client = None


def test_records_land_on_their_topic_with_the_join_key_and_schema(topics: Settings) -> None:
    streams.init(settings=topics)
    app = streams.get_application("loans")
    _, predicted = app.log(
        inputs=[{"amount": 100}, {"amount": 250}], outputs=[{"ok": 1}, {"ok": 0}]
    )
    single = app.log(inputs={"amount": 5}, outputs={"ok": 1}, version=3, tags={"env": "test"})
    _, fed = app.log(feedbacks=[{"repaid": True}], join_keys=[predicted[0]])
    _, both = app.log(inputs=[{"a": 1}], outputs=[{"b": 2}], feedbacks=[{"c": 3}])
    key = JoinKey.from_dict({"amount": 7})
    app.log(inputs={"amount": 7}, outputs={"ok": 1}, join_keys=key)
    streams.close()

    predictions = read_all(topics, PREDICTIONS, 5)
    feedback = read_all(topics, FEEDBACK, 1)
    assert sorted(m.key() for m in predictions) == sorted(  # type: ignore[type-var]
        k.encode() for k in [*predicted, single, *both, key]
    )
    assert [m.key() for m in feedback] == [predicted[0].encode()]
    for name, messages in (("prediction", predictions), ("feedback", feedback)):
        for message in messages:
            record = orjson.loads(message.value())  # type: ignore[arg-type]
            check_schema(name, record)
            assert record["schema"] == f"{name}/v1"
            assert message.key() == record["join_key"].encode("utf-8")
    inline = next(orjson.loads(m.value()) for m in predictions if m.key() == both[0].encode())  # type: ignore[arg-type]
    assert inline["feedback"] == {"c": 3}
    assert fed == [predicted[0]]


def test_partitions_match_aiokafka_murmur2(topics: Settings) -> None:
    rng = random.Random(7)
    alphabet = "abcXYZ019-_:/ éß中☃🙂"
    keys = {"".join(rng.choices(alphabet, k=rng.randint(1, 60))) for _ in range(600)}
    keys |= {str(uuid.uuid4()) for _ in range(200)} | {
        JoinKey.from_dict({"i": i}) for i in range(200)
    }
    client = Client(topics)
    rows = sorted(keys)
    Application(client, "p").log(inputs=[{}] * len(rows), outputs=[{}] * len(rows), join_keys=rows)
    client.close()

    messages = read_all(topics, PREDICTIONS, len(rows))
    assert len(messages) == len(rows)
    partitioner = DefaultPartitioner()
    for message in messages:
        key = message.key()
        assert isinstance(key, bytes)
        assert message.partition() == partitioner(key, PARTITIONS, PARTITIONS), key
    assert {m.partition() for m in messages} == set(PARTITIONS)


def test_undeliverable_records_are_reported_with_their_keys(settings: Settings) -> None:
    # No create_topics: the topics do not exist and the broker does not create them.
    client = Client(settings, {"message.timeout.ms": 2000})
    app = Application(client, "lost")
    _, keys = app.log(inputs=[{"i": i} for i in range(5)], outputs=[{}] * 5)
    key = app.log(feedbacks={"ok": True}, join_keys="fb-1")
    started = time.monotonic()
    with pytest.raises(DeliveryError) as raised:
        client.flush(timeout=30)
    assert time.monotonic() - started < 20
    assert sorted(raised.value.join_keys) == sorted([*keys, key])
    assert all(error for error in raised.value.errors)


def test_flush_timeout_reports_what_is_still_queued(settings: Settings) -> None:
    client = Client(settings, {"message.timeout.ms": 120_000})
    _, keys = Application(client, "stuck").log(inputs=[{}] * 20, outputs=[{}] * 20)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"not delivered before flush\(\) timed out") as raised:
        client.flush(timeout=1)
    assert time.monotonic() - started < 10
    assert sorted(raised.value.join_keys) == sorted(keys)
    client.close(timeout=1)  # nothing left: the purge took it all


def test_logging_from_many_threads_loses_and_doubles_nothing(topics: Settings) -> None:
    client = Client(topics)
    app = Application(client, "threads")
    logged: list[str] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for call in range(25):
            _, keys = app.log(inputs=[{"w": worker, "c": call}] * 20, outputs=[{}] * 20)
            single = app.log(feedbacks={"seen": True}, join_keys=keys[0])
            with lock:
                logged.extend([*keys, single])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()

    predictions = read_all(topics, PREDICTIONS, 8 * 25 * 20)
    feedback = read_all(topics, FEEDBACK, 8 * 25)
    sent = sorted(m.key().decode() for m in [*predictions, *feedback])  # type: ignore[union-attr]
    assert sent == sorted(logged)


def test_exit_hook_delivers_what_was_not_flushed(topics: Settings, env: dict[str, str]) -> None:
    script = (
        "import streams\n"
        "streams.init()\n"
        "print(streams.get_application('a').log(inputs={}, outputs={}))\n"  # no flush, no close
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [message] = read_all(topics, PREDICTIONS, 1)
    assert message.key() == done.stdout.strip().encode()


def joined(key: str, revision: int = 1) -> dict[str, Any]:
    """A joined/v1-shaped record, as the worker would write it."""
    return {
        "id": str(uuid.uuid4()),
        "application": "loans",
        "join_key": key,
        "feedback_revision": revision,
    }


def test_consume_joined_yields_committed_joined_records(topics: Settings) -> None:
    topic = topics.topic(JOINED)
    plain = Producer(
        {"bootstrap.servers": topics.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    first = [joined(f"k{i}") for i in range(6)]
    for record in first:
        plain.produce(topic, orjson.dumps(record), record["join_key"].encode())
    plain.flush(30)
    transactional = Producer(
        {"bootstrap.servers": topics.bootstrap_servers, "transactional.id": f"tx-{uuid.uuid4()}"}
    )
    transactional.init_transactions(30)
    transactional.begin_transaction()
    committed = joined("tx-kept")
    transactional.produce(topic, orjson.dumps(committed), b"tx-kept")
    transactional.commit_transaction(30)
    transactional.begin_transaction()
    transactional.produce(topic, orjson.dumps(joined("tx-aborted")), b"tx-aborted")
    transactional.abort_transaction(30)

    group = f"readers-{uuid.uuid4()}"
    seen = list(streams.consume_joined(group, from_beginning=True, timeout=8, settings=topics))
    assert sorted(r["id"] for r in seen) == sorted(r["id"] for r in [*first, committed])

    # Committed as it went: the group starts after what it read.
    later = joined("later")
    plain.produce(topic, orjson.dumps(later), b"later")
    plain.flush(30)
    again = list(streams.consume_joined(group, from_beginning=True, timeout=5, settings=topics))
    assert [r["id"] for r in again] == [later["id"]]


def test_consume_joined_reads_again_the_record_it_stopped_on(topics: Settings) -> None:
    topic = topics.topic(JOINED)
    plain = Producer(
        {"bootstrap.servers": topics.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    records = [joined("same-key", revision) for revision in range(1, 5)]  # one partition, in order
    for record in records:
        plain.produce(topic, orjson.dumps(record), b"same-key")
    plain.flush(30)
    group = f"readers-{uuid.uuid4()}"
    reader = streams.consume_joined(group, from_beginning=True, timeout=8, settings=topics)
    taken = list(itertools.islice(reader, 2))
    reader.close()  # stopped while handling the second record: it is not yet committed
    rest = list(streams.consume_joined(group, from_beginning=True, timeout=5, settings=topics))
    assert [r["feedback_revision"] for r in taken] == [1, 2]
    assert [r["feedback_revision"] for r in rest] == [2, 3, 4]


def test_read_topic_without_a_group_commits_nothing(topics: Settings) -> None:
    topic = topics.topic(UNMATCHED)
    plain = Producer({"bootstrap.servers": topics.bootstrap_servers})
    records = [{"reason": "expired", "n": n} for n in range(3)]
    for record in records:
        plain.produce(topic, orjson.dumps(record), b"k")
    plain.produce(topic, b"not json", b"k")  # reported and passed over
    plain.flush(30)
    for _ in range(2):  # a tail reads the same records every time
        seen = list(read_topic(topics, topic, from_beginning=True, idle_timeout=5))
        assert seen == records

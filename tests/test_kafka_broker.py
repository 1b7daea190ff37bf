"""The broker the tests run against: round trips, transactions, and the scripts that find it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka_ping import answers

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "scripts" / "kafka.sh"


@pytest.fixture
def topic(bootstrap: str, topic_prefix: str) -> Iterator[str]:
    """A one-partition topic of this test's own, deleted afterwards."""
    name = f"{topic_prefix}broker"
    client = AdminClient({"bootstrap.servers": bootstrap})
    futures = client.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1)], operation_timeout=30
    )
    futures[name].result(timeout=30)
    deadline = time.monotonic() + 15
    while name not in client.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{name} is not listed 15 s after its creation"
        time.sleep(0.05)
    yield name
    client.delete_topics([name], operation_timeout=30)[name].result(timeout=30)


def read_to_end(bootstrap: str, topic: str, isolation: str) -> list[Message]:
    """Every record of `topic` a new consumer group sees with `isolation`, up to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    consumer.subscribe([topic])
    received: list[Message] = []
    try:
        for _ in range(300):  # 30 s at most
            message = consumer.poll(0.1)
            if message is None:
                continue
            error = message.error()
            if error is None:
                received.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                return received
            else:
                raise AssertionError(f"consumer error: {error}")
    finally:
        consumer.close()
    raise AssertionError(f"no end of {topic} within 30 s; got {len(received)} records")


def first_answering(bootstrap: str) -> str:
    return next(server for server in bootstrap.split(",") if answers(server))


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.integration
def test_produce_and_consume_round_trip(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent = [(f"key-{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(20)]
    delivered: list[KafkaError | None] = []
    for key, value in sent:
        producer.produce(
            topic,
            key=key,
            value=value,
            headers=[("source", b"test")],
            on_delivery=lambda error, _message: delivered.append(error),
        )
    assert producer.flush(30) == 0
    assert delivered == [None] * len(sent)

    received = read_to_end(bootstrap, topic, "read_uncommitted")

    assert [(message.key(), message.value()) for message in received] == sent
    assert [message.offset() for message in received] == list(range(len(sent)))
    assert all(message.headers() == [("source", b"test")] for message in received)


@pytest.mark.integration
def test_a_read_committed_consumer_sees_only_committed_records(bootstrap: str, topic: str) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed-1")
    producer.produce(topic, key=b"k", value=b"committed-2")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted-1")
    producer.flush(30)  # the aborted record is really written before the abort
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed-3")
    producer.commit_transaction(30)

    committed = read_to_end(bootstrap, topic, "read_committed")
    everything = read_to_end(bootstrap, topic, "read_uncommitted")

    assert [message.value() for message in committed] == [
        b"committed-1",
        b"committed-2",
        b"committed-3",
    ]
    assert [message.value() for message in everything] == [
        b"committed-1",
        b"committed-2",
        b"aborted-1",
        b"committed-3",
    ]


@pytest.mark.integration
def test_kafka_ping_answers_for_the_broker(bootstrap: str) -> None:
    assert any(answers(server) for server in bootstrap.split(","))
    ping = subprocess.run(
        [sys.executable, str(ROOT / "streams" / "kafka_ping.py"), bootstrap],
        check=False,
        timeout=30,
    )
    assert ping.returncode == 0


@pytest.mark.unit
def test_kafka_ping_is_false_for_a_closed_port() -> None:
    address = f"127.0.0.1:{closed_port()}"

    assert answers(address) is False
    ping = subprocess.run(
        [sys.executable, str(ROOT / "streams" / "kafka_ping.py"), address],
        check=False,
        timeout=30,
    )
    assert ping.returncode == 1


@pytest.mark.unit
@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x00\x00\x00\x04"])
def test_kafka_ping_is_false_for_a_port_that_is_not_kafka(reply: bytes) -> None:
    """An open port is not a broker: only an ApiVersions reply with our id counts."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def reply_once() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(reply)

        thread = threading.Thread(target=reply_once, daemon=True)
        thread.start()
        assert answers(f"127.0.0.1:{port}", timeout=5) is False
        thread.join(timeout=5)


def kafka_sh(command: str, address: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run scripts/kafka.sh with its state under tmp_path and no way to start a broker.

    `mvn` and `java` are stubs that fail, so a run that tried to fetch jars or start a
    broker fails instead of touching the real one.
    """
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for tool in ("mvn", "java"):
        stub = stubs / tool
        stub.write_text(f"#!/bin/sh\necho 'stub {tool} called' >&2\nexit 97\n")
        stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "KAFKA_ADDRESS": address,
        "KAFKA_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        [str(KAFKA_SH), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration
def test_kafka_sh_up_is_a_no_op_when_a_broker_answers(bootstrap: str, tmp_path: Path) -> None:
    address = first_answering(bootstrap)

    result = kafka_sh("up", address, tmp_path)

    assert result.returncode == 0, result.stderr
    assert "already answers" in result.stdout
    assert address in result.stdout
    assert "stub" not in result.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.integration
def test_kafka_sh_status_reports_the_broker(bootstrap: str, tmp_path: Path) -> None:
    result = kafka_sh("status", first_answering(bootstrap), tmp_path)

    assert result.returncode == 0, result.stderr
    assert "answers" in result.stdout


@pytest.mark.unit
def test_kafka_sh_up_tries_to_start_one_when_none_answers(tmp_path: Path) -> None:
    """The no-op above is a decision, not a habit: with no broker, `up` goes to fetch jars."""
    result = kafka_sh("up", f"127.0.0.1:{closed_port()}", tmp_path)

    assert result.returncode != 0
    assert "already answers" not in result.stdout
    assert "stub mvn called" in result.stderr

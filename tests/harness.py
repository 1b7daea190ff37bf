"""Test helpers: run `streams worker` as a real process, produce raw records, read topics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.records import format_ts
from streams.worker.join import joined_id

# A worker that died without leaving its consumer groups (SIGKILL, exit 70) keeps its
# partitions until their session timeout ends (STREAMS_SESSION_TIMEOUT, 45 s by default):
# the input consumer's group, and faust's, which a restarted worker waits for before it
# reads. Tests that crash workers give them the broker's minimum, so the failover takes
# seconds; the crash is the same.
QUICK_FAILOVER = {"STREAMS_SESSION_TIMEOUT": "6s"}
# How long reads and restarts that follow a crash may take: the session timeout, a
# restore, and catching up with what was sent meanwhile, on a loaded machine.
AFTER_CRASH_TIMEOUT = 150.0


def now_ts() -> str:
    return format_ts(int(datetime.now(UTC).timestamp() * 1000))


def prediction(app: str, key: str, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "schema": "prediction/v1",
        "application": app,
        "join_key": key,
        "event_id": event_id or str(uuid.uuid4()),
        "timestamp": now_ts(),
        "inputs": {"text": f"input of {key}"},
        "outputs": {"label": "yes"},
        **fields,
    }


def feedback(
    app: str, key: str, fields: dict[str, Any], event_id: str | None = None
) -> dict[str, Any]:
    return {
        "schema": "feedback/v1",
        "application": app,
        "join_key": key,
        "event_id": event_id or str(uuid.uuid4()),
        "timestamp": now_ts(),
        "feedback": fields,
    }


class RawProducer:
    """A plain confluent-kafka producer, murmur2 unless told otherwise, for exact control."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        partitioner: str = "murmur2_random",
        compression: str = "none",
    ) -> None:
        self.prefix = prefix
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "partitioner": partitioner,
                "linger.ms": 1,
                "compression.type": compression,
            }
        )

    def send(
        self,
        topic: str,
        value: dict[str, Any] | bytes | None,
        key: str | bytes | None = None,
        partition: int | None = None,
        null_key: bool = False,
    ) -> None:
        """Produce one record; the key defaults to the value's join_key unless `null_key`."""
        raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        if key is None and isinstance(value, dict) and not null_key:
            key = value.get("join_key")
        kwargs: dict[str, Any] = {"key": key, "value": raw}
        if partition is not None:
            kwargs["partition"] = partition
        self.producer.produce(self.prefix + topic, **kwargs)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "records not delivered"


@dataclass
class Read:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any]


def as_read(message: Any) -> Read:
    """A consumed message as a `Read` (its value decoded as JSON)."""
    return Read(
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        orjson.loads(message.value()),
    )


def read_topic(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 30.0,
    settle: float = 0.0,
    until: Callable[[list[Read]], bool] | None = None,
) -> list[Read]:
    """Read `topic` from the beginning until `count` records (then `settle` s more) or timeout.

    With `until`, read until it is true of the records read instead of counting them.
    A consumer error (a missing topic, say) fails the read: it must not look like "nothing".
    To show that something did *not* come, read until a record sent after it (a sentinel,
    see `read_until_ids`) rather than for a while.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    found: list[Read] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is None and (until(found) if until else len(found) >= count):
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert not message.error(), f"reading {topic}: {message.error()}"
            found.append(as_read(message))
    finally:
        consumer.close()
    return found


def all_ids_read(ids: Iterable[str]) -> Callable[[list[Read]], bool]:
    """For `read_topic(until=...)`: true once a record with each of `ids` was read.

    It looks only at the records added since its last call (a read appends, and asks
    after each record; looking at them all each time made long reads quadratic), so
    give each read its own.
    """
    missing = set(ids)
    looked_at = 0

    def every_id_read(found: list[Read]) -> bool:
        nonlocal looked_at
        for record in found[looked_at:]:
            missing.discard(record.value.get("id"))
        looked_at = len(found)
        return not missing

    return every_id_read


def read_until_ids(bootstrap: str, topic: str, ids: set[str], timeout: float = 60.0) -> list[Read]:
    """Read `topic` until records with every id in `ids` came (sentinels sent last); fail if not.

    Records on a partition come in the order they were written, so whatever was written
    to the sentinel's partition before it is in the result.
    """
    found = read_topic(bootstrap, topic, 0, timeout, until=all_ids_read(ids))
    missing = ids - {r.value.get("id") for r in found}
    assert not missing, f"sentinel record(s) {sorted(missing)} never came on {topic}"
    return found


def key_on_partition(partition: int, partitions: int, prefix: str = "sentinel") -> str:
    """A join key that murmur2 puts on `partition` (for a sentinel next to another key)."""
    from streams.worker.processing import partition_for

    for i in range(10_000):
        key = f"{prefix}-{i}"
        if partition_for(key.encode(), partitions) == partition:
            return key
    raise AssertionError(f"no key for partition {partition}")


def read_to_end(bootstrap: str, topic: str) -> list[Read]:
    """Every record `topic` holds now, read to the end of each partition; fails on any error."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    found: list[Read] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        assert metadata.error is None, f"{topic}: {metadata.error}"
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        at_end: set[int] = set()
        while len(at_end) < len(metadata.partitions):
            message = consumer.poll(10)
            assert message is not None, f"no end of {topic} in sight"
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
                continue
            found.append(as_read(message))
    finally:
        consumer.close()
    return found


def end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    """How many records a topic holds (sum of high watermarks)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_until_equal(value: Callable[[], Any], expected: Any, timeout: float = 30.0) -> None:
    """Poll `value()` until it equals `expected`; on timeout, fail showing the last value."""
    deadline = time.monotonic() + timeout
    seen = value()
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = value()
    assert seen == expected, f"last seen {seen!r}, expected {expected!r}"


class WorkerProcess:
    """`streams worker` in a subprocess with its own environment and log file."""

    def __init__(self, env: dict[str, str], log_path: Path, **overrides: str) -> None:
        self.env = {**os.environ, **env, **overrides, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.port = int(self.env["STREAMS_WEB_PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> WorkerProcess:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_healthy()
        return self

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def http(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=5
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if self.http("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy after {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.http("/metrics")
        assert status == 200, body
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_id(records: Iterable[Read]) -> dict[str, dict[str, Any]]:
    return {r.value["id"]: r.value for r in records}


def joined_ids(events: Iterable[dict[str, Any]]) -> set[str]:
    """The ids of the joined records the feedback `events` must produce."""
    return {
        joined_id(str(e["application"]), str(e["join_key"]), str(e["event_id"])) for e in events
    }


def all_joined(events: Iterable[dict[str, Any]]) -> Callable[[list[Read]], bool]:
    """For `read_topic(until=...)`: true once every event's joined record was read.

    Counting records is not enough after a crash or a rebalance: repeats count too.
    """
    return all_ids_read(joined_ids(events))


def read_joined(
    bootstrap: str,
    topic_prefix: str,
    events: Iterable[dict[str, Any]],
    timeout: float = 60.0,
    settle: float = 2.0,
) -> list[Read]:
    """`joined` read until every feedback event's joined record came, then `settle` s more.

    Every record read is returned, repeats included (see `assert_joined_once_by_id`).
    """
    return read_topic(
        bootstrap, topic_prefix + "joined", 0, timeout, settle=settle, until=all_joined(events)
    )


def assert_joined_once_by_id(out: Iterable[Read], events: Iterable[dict[str, Any]]) -> None:
    """Every feedback event has its joined record, nothing else is there, and a repeat is identical.

    At-least-once delivery may repeat a joined record after a rebalance or a crash;
    the contract is that the repeat carries the same id and the same content.
    """
    expected = joined_ids(events)
    seen: dict[str, dict[str, Any]] = {}
    for record in out:
        content = but_joined_at(record.value)
        assert seen.setdefault(content["id"], content) == content, (
            f"repeat of {content['id']} differs"
        )
    missing = expected - set(seen)
    assert not missing, f"{len(missing)} feedback record(s) never joined: {sorted(missing)[:5]}"
    assert set(seen) == expected, "joined records nobody asked for"


def but_joined_at(record: dict[str, Any]) -> dict[str, Any]:
    """A joined record without `joined_at`: everything a repeat must carry unchanged."""
    return {name: value for name, value in record.items() if name != "joined_at"}


def processing_errors(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The `processing_error` dead letters on `topic` (a bug in the join path shows only there)."""
    return [
        r.value for r in read_to_end(bootstrap, topic) if r.value["reason"] == "processing_error"
    ]


def topic_latest(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The latest value (None: a tombstone) of every key in a compacted topic, read to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        latest: dict[bytes, bytes | None] = {}
        while len(at_end) < len(partitions):
            message = consumer.poll(5)
            assert message is not None, f"no end of {topic} in sight"
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
                continue
            latest[message.key()] = message.value()
        return latest
    finally:
        consumer.close()


def stats_totals(bootstrap: str, topic: str) -> dict[tuple[Any, ...], list[Any]]:
    """`feedback-stats` as a reader sees it: the latest share per key, partitions added up.

    Maps (application, version, field, minute) to [count, true, false, numbers, sum].
    """
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for key, value in topic_latest(bootstrap, topic).items():
        if value is None:
            continue
        record = orjson.loads(value)
        application, version, field, minute, partition = orjson.loads(key)
        assert (application, version, field, minute, partition) == (
            record["application"],
            record["version"],
            record["field"],
            record["minute"],
            record["partition"],
        ), "the key names the share its value carries"
        current = totals.setdefault((application, version, field, minute), [0, 0, 0, 0, 0])
        for i, name in enumerate(("count", "true", "false", "numbers", "sum")):
            current[i] += record[name]
    return totals


KAFKA_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"


def free_port_range(count: int) -> int:
    """A port P such that P .. P+count-1 are all free right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count >= 65_000:
            continue
        free = True
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise AssertionError("no range of free ports found")


def own_broker_env(state: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment for `scripts/kafka.sh` to run a broker of a test's own (not the shared
    one): its state under `state`, PLAINTEXT on `port`, the controller on `port` + 1."""
    return {
        **os.environ,
        "KAFKA_STATE_DIR": str(state),
        "KAFKA_ADDRESS": f"localhost:{port}",
        "KAFKA_HEAP": "512m",
        **extra,
    }


def kafka_script(command: str, env: dict[str, str]) -> None:
    """`scripts/kafka.sh up|down` with `env` (from `own_broker_env`); fails showing its output."""
    done = subprocess.run(
        [str(KAFKA_SCRIPT), command],
        env=env,
        cwd=KAFKA_SCRIPT.parent.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"kafka.sh {command} failed:\n{done.stdout}{done.stderr}"


# The `start_worker` fixture: starts a `streams worker` process with extra settings.
Start = Callable[..., WorkerProcess]

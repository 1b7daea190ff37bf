"""Prompt versions on a real broker: numbers decided by the log, shared by every process, kept."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

import streams
from streams.sdk import session as sdk
from streams.sdk.versions import VersionStore
from streams.settings import Settings
from streams.topics import VERSIONS, create_topics

pytestmark = pytest.mark.integration

PROMPT = "Summarize {{text}} for {{name}}."

# One creator process: warms up (imports, connection, topic), waits for the common start
# moment, then creates `count` versions as fast as it can; prints [version_id, number]s.
CREATOR = """
import json, sys, time
import streams
name, count, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
streams.init()
app = streams.get_application(name)
app.get_version("latest")
time.sleep(max(0.0, start - time.time()))
made = [app.create_version(f"prompt {i} {{{{text}}}}", f"pid {i}", "m") for i in range(count)]
print(json.dumps([[str(v.version_id), v.version_number] for v in made]))
"""


@pytest.fixture(autouse=True)
def no_global_client() -> Iterator[None]:
    yield
    streams.close() if sdk._client is not None else None


@pytest.fixture
def topics(settings: Settings) -> Settings:
    create_topics(settings)
    return settings


def streams_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_creators_get_distinct_numbers_in_log_order(
    topics: Settings, env: dict[str, str], round_: int
) -> None:
    """Invariant: N processes creating K versions each of one application at the same moment
    get the numbers 1..N*K, each once; every process's own numbers rise; a fresh reader
    numbers every version as its creator was told."""
    processes, count = 4, 5
    name = f"chat-{round_}"
    start = time.time() + 4.0
    running = [
        subprocess.Popen(
            [sys.executable, "-c", CREATOR, name, str(count), str(start)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    told: dict[str, int] = {}
    for process in running:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        made = json.loads(out)
        numbers = [number for _, number in made]
        assert numbers == sorted(numbers), numbers
        told.update(dict(made))
    assert sorted(told.values()) == list(range(1, processes * count + 1))
    catalog = VersionStore(topics).catalog(name)
    assert {str(v.version_id): v.version_number for v in catalog.versions} == told


def test_every_process_reads_the_same_versions_and_releases(
    topics: Settings, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    streams.init(settings=topics)
    app = streams.get_application("chat")
    assert app.get_version("prod") is None
    assert "No version found for 'prod'" in caplog.text
    first = app.create_version(PROMPT, "first", "gpt-4o-mini", {"temperature": 0.2})
    second = app.create_version("Hi {{name}}", "second", "gpt-4o")
    assert (first.version_number, second.version_number) == (1, 2)
    assert first.config == {
        "prompt": PROMPT,
        "prompt_inputs": ["text", "name"],
        "model": "gpt-4o-mini",
        "params": {"temperature": 0.2},
    }
    assert (first.description, first.app_name) == ("first", "chat")
    assert isinstance(first.version_id, uuid.UUID)
    assert streams.get_application("other").create_version("x", "", "m").version_number == 1
    app.release_version(1, "prod")
    app.release_version(2, "test")
    app.deploy_version(second.version_id, "prod")  # Gantry's name, by id
    app.release_version(1, "test")

    assert app.get_version("prod") == second
    assert app.get_version("test") == first
    assert app.get_version("latest") == second
    assert app.get_version(1) == first
    caplog.clear()
    assert app.get_version(3) is None
    assert app.get_version("staging") is None
    assert "No version found for 3" in caplog.text
    assert "No version found for 'staging'" in caplog.text
    filled = streams.fill_prompt(
        app.get_version("test").config["prompt"], {"text": "t", "name": "A"}
    )  # type: ignore[union-attr]
    assert filled == "Summarize t for A."

    # Another process (the command line), started after all of it, reads the same.
    listed = streams_cli(env, "versions", "list", "--application", "chat", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    document = orjson.loads(listed.stdout)
    assert document["releases"] == {"prod": 2, "test": 1}
    assert [
        (v["version_number"], v["version_id"], v["environments"]) for v in document["versions"]
    ] == [(1, str(first.version_id), ["test"]), (2, str(second.version_id), ["prod"])]
    with pytest.raises(streams.LogError, match=r"^version_number: chat has no version 3"):
        app.release_version(3, "prod")


def test_the_command_line_creates_releases_lists_and_shows(
    topics: Settings, env: dict[str, str]
) -> None:
    created = streams_cli(
        env, "versions", "create", "--application", "chat", "--prompt", PROMPT,
        "--model", "gpt-4o-mini", "--description", "short", "--params", '{"temperature": 0.1}',
        "--format", "json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    version = orjson.loads(created.stdout)
    assert version["version_number"] == 1
    assert version["config"]["prompt_inputs"] == ["text", "name"]
    assert version["config"]["params"] == {"temperature": 0.1}
    again = streams_cli(
        env, "versions", "create", "--application", "chat", "--prompt", "v2", "--model", "m"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("chat: created version 2 (")
    released = streams_cli(
        env, "versions", "release", "--application", "chat", "--version", "1", "--env", "prod"
    )
    assert released.stdout.strip() == "chat: prod runs version 1", released.stderr
    table = streams_cli(env, "versions", "list", "--application", "chat").stdout.splitlines()
    assert table[0].split() == ["version", "environments", "model", "created_at", "description"]
    assert table[1].split()[:3] == ["1", "prod", "gpt-4o-mini"]
    assert table[2].split()[:3] == ["2", "-", "m"]
    shown = streams_cli(
        env, "versions", "show", "--application", "chat", "--version", "prod", "--format", "json"
    )
    assert orjson.loads(shown.stdout) == {**version, "environments": ["prod"]}
    text = streams_cli(env, "versions", "show", "--application", "chat").stdout
    assert "version_number  2" in text
    missing = streams_cli(
        env, "versions", "release", "--application", "chat", "--version", "9", "--env", "prod"
    )
    assert missing.returncode == 1
    assert "version_number: chat has no version 9" in missing.stderr
    unknown = streams_cli(env, "versions", "show", "--application", "chat", "--version", "test")
    assert unknown.returncode == 1
    assert "chat has no version 'test'" in unknown.stderr
    bad = streams_cli(
        env, "versions", "create", "--application", "chat", "--prompt", "p", "--model", "m",
        "--params", "[1]",
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--params" in bad.stderr


def raw_records(settings: Settings) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, value) of every record the `versions` topic holds now."""
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": f"raw-{uuid.uuid4()}"}
    )
    topic = settings.topic(VERSIONS)
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[tuple[bytes, dict[str, Any]]] = []
    try:
        while not out or out[-1][1]["_offset"] < high - 1:
            for message in consumer.consume(100, 1.0):
                assert message.error() is None, message.error()
                record = orjson.loads(message.value())  # type: ignore[arg-type]
                record["_offset"] = message.offset()
                out.append((message.key(), record))  # type: ignore[arg-type]
    finally:
        consumer.close()
    return out


def test_compaction_keeps_every_version_and_the_latest_release(topics: Settings) -> None:
    """Invariant: after the broker compacts the topic, the versions keep their ids and numbers
    and each environment still runs the version it was last pointed at."""
    topic = topics.topic(VERSIONS)
    admin = AdminClient({"bootstrap.servers": topics.bootstrap_servers})
    # Roll a segment every 100 ms and clean anything dirty, so compaction runs within the
    # broker's cleaner backoff (15 s) instead of after a week.
    aggressive = {
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.001",
        "delete.retention.ms": "100",
        "min.compaction.lag.ms": "0",
    }
    resource = ConfigResource(
        "topic",
        topic,
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in aggressive.items()
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    store = VersionStore(topics)
    made = []
    for i in range(3):
        made.append(store.create("chat", f"p{i}", f"v{i + 1}", "m"))
        for number in (1, 2, 3, i + 1):  # the releases compaction may drop
            store.release("chat", min(number, i + 1), "prod")
            time.sleep(0.15)
    store.release("chat", 2, "test")
    before = store.catalog("chat")
    written = sum(1 for _, record in raw_records(topics) if record["application"] == "chat")
    # Keep writing (other applications) so the segments holding the old releases roll.
    deadline = time.monotonic() + 120
    while True:
        store.create("filler", "p", "", "m")
        time.sleep(0.5)
        held = [key for key, record in raw_records(topics) if record["application"] == "chat"]
        if len(held) < written:
            break
        assert time.monotonic() < deadline, "the broker did not compact the topic in 120 s"
    assert len(held) == len(set(held)), "compaction left a key twice"
    after = store.catalog("chat")
    assert after.versions == before.versions == made
    assert after.releases == before.releases
    assert after.released("prod") == made[2]
    assert after.released("test") == made[1]


def test_foreign_records_are_passed_over_and_a_retried_write_counts_once(
    topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = VersionStore(topics)
    first = store.create("chat", "p", "", "m")
    # What a writer's retry leaves: the same version record twice.
    (key, record), *_ = raw_records(topics)
    del record["_offset"]
    producer = Producer({"bootstrap.servers": topics.bootstrap_servers})
    producer.produce(topics.topic(VERSIONS), orjson.dumps(record), key, partition=0)
    producer.produce(topics.topic(VERSIONS), b"{oops", b'["chat","version","x"]', partition=0)
    producer.produce(topics.topic(VERSIONS), b'{"schema": "version/v1"}', b"k", partition=0)
    assert producer.flush(30) == 0
    caplog.set_level(logging.WARNING)
    second = store.create("chat", "p2", "", "m")
    assert second.version_number == 2
    assert store.catalog("chat").versions == [first, second]
    assert caplog.text.count("versions_record_skipped") == 4  # by create, then by catalog

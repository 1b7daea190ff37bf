"""Shared fixtures: one real broker per session, and a fresh topic prefix per test."""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import RawProducer, WorkerProcess, processing_errors

from streams.kafka_ping import answers
from streams.settings import Settings
from streams.topics import delete_topics

ROOT = Path(__file__).resolve().parent.parent

KINDS = ("unit", "integration", "chaos")
BROKER_FIXTURES = {"bootstrap", "settings", "env", "workers", "producer"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test says what it needs: exactly one of the markers unit, integration, chaos."""
    for item in items:
        kinds = [kind for kind in KINDS if item.get_closest_marker(kind)]
        if len(kinds) != 1:
            raise pytest.UsageError(f"{item.nodeid}: mark it with one of {KINDS}, not {kinds}")
        uses_broker = BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if kinds == ["unit"] and uses_broker:
            raise pytest.UsageError(f"{item.nodeid}: a unit test may not use {sorted(uses_broker)}")


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The broker at STREAMS_BOOTSTRAP_SERVERS if it answers, else the local one (`make kafka-up`).

    Never skips: a test that needs a broker and has none fails. Test processes run side
    by side (`make test` runs pytest-xdist) start it one at a time: the first starts it,
    the others find it answering.
    """
    servers = os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
    if any(answers(server) for server in servers.split(",")):
        return servers
    if servers != "localhost:9092":
        pytest.fail(f"no Kafka broker answers at STREAMS_BOOTSTRAP_SERVERS={servers}")
    # The parent of the base temp dir is the same for every process of one run.
    with (tmp_path_factory.getbasetemp().parent / "kafka-up.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "up"], check=True, cwd=ROOT)
    assert answers(servers), "make kafka-up returned but no broker answers"
    return servers


@pytest.fixture
def topic_prefix() -> Iterator[str]:
    """A prefix no other test uses, so tests never see each other's records.

    Afterwards the test's topics (inputs, outputs and the changelogs named after its
    app id) are deleted, so the broker does not slow down under thousands of them.
    """
    prefix = f"t-{uuid.uuid4().hex[:12]}."
    yield prefix
    servers = os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
    if any(answers(server) for server in servers.split(",")):
        delete_topics(Settings(bootstrap_servers=servers), (prefix, f"app-{prefix.strip('.')}"))


@pytest.fixture
def env(bootstrap: str, topic_prefix: str, tmp_path: Path) -> dict[str, str]:
    """STREAMS_* variables for this test: its own topics, group, data dir and web port."""
    return {
        "STREAMS_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMS_TOPIC_PREFIX": topic_prefix,
        "STREAMS_APP_ID": f"app-{topic_prefix.strip('.')}",
        "STREAMS_PARTITIONS": "4",
        "STREAMS_DATA_DIR": str(tmp_path / "data"),
        "STREAMS_WEB_PORT": str(free_port()),
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    """Settings built from this test's `env`."""
    return Settings.from_env(env)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STREAMS_* variable from the caller's shell leaks into the test."""
    for name in list(os.environ):
        if name.startswith("STREAMS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `streams worker` processes (own data dir and port each); stop them after.

    Afterwards the test's `deadletter` topic must hold no `processing_error`: an exception
    in the join path dead-letters its input, and would otherwise show only as missing output.
    """
    started: list[WorkerProcess] = []

    def start(name: str = "w1", wait: bool = True, **overrides: str) -> WorkerProcess:
        if started:  # every further worker needs its own data dir and web port
            overrides.setdefault("STREAMS_DATA_DIR", str(tmp_path / f"data-{name}"))
            overrides.setdefault("STREAMS_WEB_PORT", str(free_port()))
        worker = WorkerProcess(env, tmp_path / f"{name}.log", **overrides)
        started.append(worker)
        return worker.start(wait)

    yield start
    for worker in started:
        worker.stop()
    if started:
        topic = env["STREAMS_TOPIC_PREFIX"] + "deadletter"
        errors = processing_errors(env["STREAMS_BOOTSTRAP_SERVERS"], topic)
        assert errors == [], f"processing_error dead letters: {errors[:3]}"


@pytest.fixture
def producer(bootstrap: str, topic_prefix: str) -> RawProducer:
    """A raw confluent-kafka producer (murmur2) writing to this test's topics."""
    return RawProducer(bootstrap, topic_prefix)

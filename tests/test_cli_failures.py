"""Every failure of the `streams` command in one line on stderr, a non-zero exit, and an end.

What each test holds the command to (issue #12): stderr is one line that names the
problem and what to do, the exit status is not zero, no traceback, and the command
ends within seconds (or its configured timeout).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from conftest import free_port
from harness import RawProducer
from test_topics import topic_configs

from streams.settings import Settings
from streams.topics import CONNECT_TIMEOUT, changelog_topic, leader_topic

DEAD = "localhost:1"  # nothing listens there


def streams_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """The command failed and said why in one line naming each of `named`."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in named:
        assert name in lines[0], lines[0]
    return lines[0]


COMMANDS = [
    ("topics", "create"),
    ("tail", "joined"),  # no --timeout: it must still end
    ("tail", "deadletter", "--from-beginning", "--timeout", "30"),
    ("stats", "--application", "chat", "--field", "thumbs_up"),
    ("worker",),
    ("versions", "list", "--application", "chat"),
]


@pytest.mark.unit
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["port-1", "free-port"])
def test_an_unreachable_broker_is_one_line_and_a_quick_exit(
    command: tuple[str, ...], where: str, tmp_path: Path
) -> None:
    servers = DEAD if where == "port-1" else f"127.0.0.1:{free_port()}"
    env = {
        "STREAMS_BOOTSTRAP_SERVERS": servers,
        "STREAMS_DATA_DIR": str(tmp_path / "data"),
        "STREAMS_WEB_PORT": str(free_port()),
    }
    started = time.monotonic()
    result = streams_cli(*command, env=env, timeout=30)
    line = one_line(result, "STREAMS_BOOTSTRAP_SERVERS", servers)
    assert "start one" in line  # what to do
    assert time.monotonic() - started < 8


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A port that accepts connections and never answers: not a Kafka broker."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.unit
def test_a_port_that_does_not_speak_kafka_is_given_up_on_after_the_connect_timeout(
    silent_listener: str,
) -> None:
    started = time.monotonic()
    result = streams_cli(
        "topics", "create", env={"STREAMS_BOOTSTRAP_SERVERS": silent_listener}, timeout=60
    )
    one_line(result, "STREAMS_BOOTSTRAP_SERVERS", f"within {CONNECT_TIMEOUT:g} s")
    assert time.monotonic() - started < CONNECT_TIMEOUT + 8


@pytest.mark.unit
@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("STREAMS_RETENTION", "100d", "90-day maximum"),
        ("STREAMS_RETENTION_BY_APPLICATION", "chat=120d", "(chat)"),
        ("STREAMS_RETENTION_BY_APPLICATION", "chat=7d,loans=3d,chat=8d", "'chat' is listed twice"),
        ("STREAMS_LOG_LEVEL", "loud", "DEBUG, INFO, WARNING"),
        ("STREAMS_FLUSH_TIMEOUT", "never", "not a duration"),
    ],
)
@pytest.mark.parametrize("command", [("worker",), ("topics", "create")], ids=" ".join)
def test_a_setting_that_used_to_slip_through_stops_the_start(
    variable: str, value: str, named: str, command: tuple[str, ...]
) -> None:
    result = streams_cli(*command, env={variable: value, "STREAMS_BOOTSTRAP_SERVERS": DEAD})
    one_line(result, variable, named)
    assert result.returncode == 2


@pytest.mark.unit
def test_a_web_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = streams_cli(
            "worker",
            env={
                "STREAMS_WEB_PORT": str(port),
                "STREAMS_DATA_DIR": str(tmp_path / "data"),
                "STREAMS_BOOTSTRAP_SERVERS": DEAD,
            },
            timeout=30,
        )
    one_line(result, f"STREAMS_WEB_PORT={port}", "its own STREAMS_WEB_PORT")


LOCK_HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from streams.worker.run import lock_data_dir\n"
    "lock_data_dir(Path(sys.argv[1]))\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.mark.unit
def test_the_data_dir_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"STREAMS_DATA_DIR": str(data_dir), "STREAMS_BOOTSTRAP_SERVERS": DEAD}
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            refused = streams_cli("worker", env=env, timeout=30)
            one_line(refused, f"STREAMS_DATA_DIR={data_dir}", f"pid {holder.pid}")
        finally:
            holder.send_signal(signal.SIGKILL)
    # Killed, the holder's lock went with it: the next worker gets past the lock (and
    # stops at the broker check).
    after = streams_cli("worker", env=env, timeout=30)
    one_line(after, "STREAMS_BOOTSTRAP_SERVERS")


@pytest.mark.integration
def test_a_second_worker_on_a_data_dir_in_use_refuses_at_start(
    workers: object, env: dict[str, str]
) -> None:
    first = workers()  # type: ignore[operator]
    started = time.monotonic()
    second = streams_cli("worker", env={**env, "STREAMS_WEB_PORT": str(free_port())}, timeout=30)
    pid = first.process.pid
    one_line(second, f"STREAMS_DATA_DIR={env['STREAMS_DATA_DIR']}", f"pid {pid}")
    assert time.monotonic() - started < 10
    assert first.http("/health")[0] == 200  # the first one goes on


@pytest.mark.integration
def test_topics_create_reports_real_counts_and_a_mismatch(
    env: dict[str, str], topic_prefix: str, bootstrap: str
) -> None:
    client = AdminClient({"bootstrap.servers": bootstrap})
    feedback = topic_prefix + "feedback"
    client.create_topics([NewTopic(feedback, num_partitions=3, replication_factor=-1)])[
        feedback
    ].result(timeout=30)

    result = streams_cli("topics", "create", env=env)

    lines = {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}
    assert lines[feedback] == ["3 partitions", "exists"]
    assert lines[topic_prefix + "predictions"] == ["4 partitions", "created"]
    one_line(result, f"{topic_prefix}predictions has 4", f"{feedback} has 3", "refuses")
    assert result.returncode == 1


@pytest.mark.integration
def test_topics_create_makes_the_workers_own_topics_too(
    env: dict[str, str], topic_prefix: str, bootstrap: str
) -> None:
    settings = Settings.from_env(env)
    internal = [changelog_topic(settings, "state"), changelog_topic(settings, "due")]

    result = streams_cli("topics", "create", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}
    for name in internal:
        assert lines[name] == ["4 partitions", "created"]  # as the inputs: co-partitioned
    assert lines[leader_topic(settings)] == ["1 partition", "created"]
    client = AdminClient({"bootstrap.servers": bootstrap})
    for name in internal:
        assert topic_configs(client, name)["cleanup.policy"] == "compact"
    again = streams_cli("topics", "create", env=env)
    assert all(line.endswith("exists") for line in again.stdout.splitlines())


@pytest.mark.integration
def test_tail_into_head_ends_quietly(
    env: dict[str, str], topic_prefix: str, producer: RawProducer
) -> None:
    assert streams_cli("topics", "create", env=env).returncode == 0
    # More than a pipe buffer holds, so `streams tail` is still writing when head leaves.
    for i in range(2000):
        producer.send("joined", {"id": str(i), "padding": "x" * 100}, key=str(i))
    producer.flush()
    env_line = " ".join(f"{k}={v}" for k, v in env.items())
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; env {env_line} {sys.executable} -m streams.cli "
            "tail joined --from-beginning | head -2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len([orjson.loads(line)["id"] for line in result.stdout.splitlines()]) == 2

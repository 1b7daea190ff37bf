"""The benchmark's plumbing: contender processes, /proc figures, topics, the joined reader.

Both contenders run as subprocesses with the same STREAMS_* variables, so every figure
is taken the same way: CPU (`utime + stime` of /proc/<pid>/stat), peak RSS (`VmHWM`
of /proc/<pid>/status), disk (allocated blocks under the data directory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from streams.settings import Settings
from streams.topics import admin

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_mib(path: Path) -> float:
    """Disk space allocated to the files under `path`, MiB."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total / 1024**2


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PYTHON_M = [sys.executable, "-m"]
# Contenders other than `worker` (the `streams` command a user runs), by module.
MODULES = {"baseline": "bench.baseline", "ceiling": "bench.ceiling"}


def bench_env(
    name: str, bootstrap: str, partitions: int, workdir: Path, tag: str
) -> dict[str, str]:
    """STREAMS_* variables of one contender: its own topic prefix, app id, data dir, port."""
    app_id = f"bench-{tag}-{name}-{uuid.uuid4().hex[:6]}"
    return {
        "STREAMS_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMS_TOPIC_PREFIX": f"{app_id}.",
        "STREAMS_APP_ID": app_id,
        "STREAMS_PARTITIONS": str(partitions),
        "STREAMS_DATA_DIR": str(workdir / app_id / "data"),
        "STREAMS_WEB_PORT": str(free_port()),
    }


def cleanup(settings: Settings) -> None:
    """Delete every topic named after the app id (inputs, outputs, changelogs) and its group."""
    client = admin(settings)
    app_id = settings.app_id
    names = [name for name in client.list_topics(timeout=10).topics if name.startswith(app_id)]
    futures = dict(client.delete_topics(names, operation_timeout=30)) if names else {}
    groups = [app_id, f"{app_id}-inputs"]  # faust's group, and the worker's input consumer's
    futures.update(client.delete_consumer_groups(groups, request_timeout=30))
    for future in futures.values():
        with contextlib.suppress(KafkaException):  # already gone, or a group never made
            future.result(timeout=30)


@dataclass
class Contender:
    """One contender of one run: its command, its own topics, group and data directory."""

    name: str
    command: list[str]
    settings: Settings
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def make(cls, name: str, env: dict[str, str]) -> Contender:
        """Contender `worker` (`streams worker`), `baseline` or `ceiling`; env from `bench_env`."""
        script = Path(sys.executable).parent / "streams"  # the console script a user runs
        if name in MODULES:
            command = [*PYTHON_M, MODULES[name]]
        elif script.exists():
            command = [str(script), "worker"]
        else:
            command = [*PYTHON_M, "streams.cli", "worker"]
        settings = Settings.from_env(env)
        log_path = settings.data_dir.parent / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return cls(name, command, settings, env, log_path)

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> None:
        """Start the process; its output goes to `log_path`."""
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n" + "\n".join(tail)
            )

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, wait, then SIGKILL if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@dataclass
class Joined:
    """One joined record as read: when it was read (epoch ms) and its Kafka timestamp."""

    read_ms: float
    kafka_ts: int
    value: dict[str, object]


class JoinedReader:
    """Reads a `joined` topic from where it ends now (or its start), without a group."""

    def __init__(self, settings: Settings, topic: str, from_start: bool = False) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 50,
            }
        )
        partitions = len(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        self.consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING if from_start else self._end(topic, p))
                for p in range(partitions)
            ]
        )

    def _end(self, topic: str, partition: int) -> int:
        # A topic created a moment ago may not have its leader yet: ask again.
        deadline = time.monotonic() + 30
        while True:
            try:
                high: int = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )[1]
                return high
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def poll(self, timeout: float = 0.1) -> Iterator[Joined]:
        """The records readable now (waiting up to `timeout` for the first)."""
        # consume() would wait out its timeout for a full batch: wait for one, take the rest.
        first = self.consumer.poll(timeout)
        messages = [] if first is None else [first, *self.consumer.consume(499, timeout=0)]
        read_ms = time.time_ns() / 1e6  # once per batch: every record in it was readable by then
        for message in messages:
            if message.error() is not None:
                continue
            yield Joined(read_ms, message.timestamp()[1], orjson.loads(message.value() or b"{}"))

    def close(self) -> None:
        """Leave the broker."""
        self.consumer.close()

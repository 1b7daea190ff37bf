"""The benchmark's plumbing: contender processes, /proc figures, topics, the joined reader.

Every contender runs as a subprocess with the same STREAMS_* variables, so every figure
is taken the same way: CPU (`utime + stime` of /proc/<pid>/stat), peak RSS (`VmHWM`
of /proc/<pid>/status), disk (allocated blocks under the data directory), and when it
read its first input record (`FirstRead`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)

import streams
from bench import peers
from streams.kafka_config import librdkafka_config
from streams.settings import Settings
from streams.topics import FEEDBACK, PREDICTIONS, admin

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
# The worker as a user runs it, in each processing guarantee (`streams worker`).
GUARANTEE_OF = {"worker": "at_least_once", "worker-eos": "exactly_once"}
# The project's own benchmark rows (not `worker`, the `streams` command a user runs), by module.
MODULES = {"baseline": "bench.baseline", "ceiling": "bench.ceiling"}
# Where a contender other than the worker writes the wall-clock ms of its first input read.
FIRST_READ_FILE = "first-read-ms"
RECORDS_IN = "streams_records_in_total"  # the worker's input counter on /metrics


def bench_env(
    name: str, bootstrap: str, partitions: int, workdir: Path, tag: str
) -> dict[str, str]:
    """STREAMS_* variables of one contender: its own topic prefix, app id, data dir, port."""
    app_id = f"bench-{tag}-{name}-{uuid.uuid4().hex[:6]}"
    env = {
        "STREAMS_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMS_TOPIC_PREFIX": f"{app_id}.",
        "STREAMS_APP_ID": app_id,
        "STREAMS_PARTITIONS": str(partitions),
        "STREAMS_DATA_DIR": str(workdir / app_id / "data"),
        "STREAMS_WEB_PORT": str(free_port()),
    }
    if name in GUARANTEE_OF:
        env["STREAMS_PROCESSING_GUARANTEE"] = GUARANTEE_OF[name]
    return env


def cleanup(settings: Settings) -> None:
    """Delete every topic named after the app id (inputs, outputs, changelogs) and its group."""
    client = admin(settings)
    app_id = settings.app_id
    # Quix names its changelogs `changelog__<group>--...`: the app id is inside, not first.
    names = [name for name in client.list_topics(timeout=10).topics if app_id in name]
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
        """Contender `worker`/`worker-eos` (`streams worker`), a peer, `baseline` or `ceiling`.

        `env`: from `bench_env`. A peer whose build fails raises `peers.PeerUnavailable`.
        """
        script = Path(sys.executable).parent / "streams"  # the console script a user runs
        if name in MODULES:
            command = [*PYTHON_M, MODULES[name]]
        elif name in peers.COMMANDS:
            command = peers.COMMANDS[name]()
        elif script.exists():
            command = [str(script), "worker"]
            # The console script imports `streams` from wherever it was installed (an
            # editable install points at one checkout): the worker measured is the code
            # this benchmark imports, whichever checkout or worktree runs it.
            env = {**env, "PYTHONPATH": str(Path(streams.__file__).resolve().parent.parent)}
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


def _get(port: int, path: str) -> tuple[int, bytes]:
    """GET a page of a worker's web server on this host: (status, body); (0, b"") if none."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=1) as page:
            return int(page.status), bytes(page.read())
    except urllib.error.HTTPError as error:
        return int(error.code), b""
    except OSError:
        return 0, b""  # not listening (yet)


def metric_sum(port: int, name: str) -> float:
    """The sum of every sample of metric `name` on a worker's /metrics (0 if it does not answer)."""
    status, body = _get(port, "/metrics")
    if status != 200:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    )


def healthy(port: int) -> bool:
    """True when a worker's /health answers 200."""
    return _get(port, "/health")[0] == 200


def mark_first_read(data_dir: Path) -> None:
    """Write the wall-clock ms now to `data_dir/first-read-ms` (atomically: renamed in place)."""
    partial = data_dir / f"{FIRST_READ_FILE}.partial"
    partial.write_text(str(time.time_ns() // 1_000_000))
    partial.replace(data_dir / FIRST_READ_FILE)


def records_in(settings: Settings, topics: list[str]) -> int:
    """How many records the topics hold now (from offset 0: nothing has expired yet)."""
    consumer = Consumer({**librdkafka_config(settings), "group.id": uuid.uuid4().hex})
    try:
        total = 0
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                total += high - low
        return total
    finally:
        consumer.close()


def input_drained(settings: Settings) -> bool:
    """True once the group `app_id` has committed every input record the topics hold now."""
    client = admin(settings)
    consumer = Consumer({**librdkafka_config(settings), "group.id": uuid.uuid4().hex})
    try:
        group = ConsumerGroupTopicPartitions(settings.app_id)
        committed = client.list_consumer_group_offsets([group])[settings.app_id].result(10)
        done = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions}
        for topic in (settings.topic(PREDICTIONS), settings.topic(FEEDBACK)):
            for partition in range(settings.partitions):
                high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)[1]
                if high and done.get((topic, partition), -1) < high:
                    return False
        return True
    except KafkaException:
        return False
    finally:
        consumer.close()


# The worker's log line when it applies its first input record (faust's format, or the
# command line's), with its local time to the ms.
FIRST_INPUT_LINE = re.compile(
    r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]?.*\bfirst_input topic=", re.M
)


class FirstRead(threading.Thread):
    """When a contender read its first input record, in epoch ms.

    Contenders other than the worker (either guarantee) write it to
    `STREAMS_DATA_DIR/first-read-ms`. The worker is watched from outside: the time of its
    `first_input` log line, written as it applies the first record it read. Its `/metrics`
    alone are no good for this: they are served between batches, so
    `streams_records_in_total` shows the first read only after a batch or more, and a small
    run can be drained by then. `/metrics` is polled as the fallback if no such line shows
    (stamped when asked, not when answered); a first-read-ms file wins.
    """

    def __init__(self, contender: Contender) -> None:
        super().__init__(name=f"first-read-{contender.name}", daemon=True)
        self.path = contender.settings.data_dir / FIRST_READ_FILE
        self.port = contender.settings.web_port
        self.log_path = contender.log_path
        self.log_start = contender.log_path.stat().st_size if contender.log_path.exists() else 0
        self.watch = contender.name in GUARANTEE_OF
        self.seen_ms = math.nan
        self.stopped = threading.Event()

    def run(self) -> None:
        """Poll the worker's /metrics until it has read a record (or `stop()`)."""
        while self.watch and not self.stopped.wait(0.01):
            asked_ms = time.time_ns() / 1e6
            if metric_sum(self.port, RECORDS_IN) > 0:
                self.seen_ms = asked_ms
                return

    def first_input_in_log(self) -> float | None:
        """The epoch ms of the worker's first-input line of this start, if it is there."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_start)
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        found = FIRST_INPUT_LINE.search(text)
        if found is None:
            return None
        local = time.mktime(time.strptime(found[1], "%Y-%m-%d %H:%M:%S"))
        return local * 1000 + int(found[2])

    def stop(self) -> None:
        """Stop watching."""
        self.stopped.set()

    def ms(self) -> float:
        """The first read's epoch ms, or NaN if unknown (ask once the contender is done)."""
        try:
            return float(self.path.read_text())
        except (FileNotFoundError, ValueError):
            pass
        # The log may reach the file late (buffered): its time is when the line was made.
        logged = self.first_input_in_log() if self.watch else None
        return self.seen_ms if logged is None else min(logged, self.seen_ms)


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
                **librdkafka_config(settings),
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
